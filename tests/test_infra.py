"""Infrastructure contracts: the files under infra/ parse, and say what infra/README.md relies on.

No Docker engine or Kubernetes runs here, so these tests read the files: GPU resources and
autoscaling, pinned images, Ray token auth from a Secret, ports, Airflow auth, secrets only from
.env, non-root images without weights. Each check is a function returning its problems; the
`*_catches_*` tests feed it a broken copy, so a check that can never fail fails itself.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
KUBERAY = INFRA / "kuberay"
COMPOSE_FILE = INFRA / "airflow" / "docker-compose.yaml"
ENV_EXAMPLE = INFRA / "airflow" / ".env.example"
WORKER_DOCKERFILE = INFRA / "docker" / "Dockerfile"
AIRFLOW_DOCKERFILE = INFRA / "docker" / "airflow.Dockerfile"
DOCKERFILES = [WORKER_DOCKERFILE, AIRFLOW_DOCKERFILE]
GPU = "nvidia.com/gpu"
SECRET_NAME = re.compile(r"(^|_)(PASSWORD|SECRET|TOKEN|FERNET_KEY|API_KEY)(_|$)|SQL_ALCHEMY_CONN", re.I)
REQUIRED_REF = re.compile(r"\$\{(\w+):\?[^}]*\}")


def compose_text() -> str:
    """The compose file without its comments (which may quote `${VAR:?...}` as an example)."""
    return re.sub(r"(?m)^\s*#.*$", "", COMPOSE_FILE.read_text(encoding="utf-8"))


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def k8s_docs() -> list[dict]:
    return [d for p in sorted(KUBERAY.glob("*.yaml")) for d in load_docs(p)]


def cluster_specs() -> list[tuple[str, dict]]:
    """(name, RayClusterSpec) of every RayCluster and of every RayJob's own cluster."""
    specs = []
    for d in k8s_docs():
        if d["kind"] == "RayCluster":
            specs.append((d["metadata"]["name"], d["spec"]))
        elif d["kind"] == "RayJob" and "rayClusterSpec" in d["spec"]:
            specs.append((d["metadata"]["name"], d["spec"]["rayClusterSpec"]))
    return specs


def of_kind(kind: str) -> list[dict]:
    return [d for d in k8s_docs() if d["kind"] == kind]


def containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def ray_containers(spec: dict) -> list[dict]:
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]
    return [c for t in templates for c in containers(t)]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def walk(node, key: str):
    """Every value stored under `key`, anywhere in a parsed YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)


# --- checks: each returns a list of problems ------------------------------------------------

def token_auth_problems(spec: dict, extra: list[dict] = ()) -> list[str]:
    """Every Ray process (and the autoscaler, and submitters) has token auth from a Secret."""
    wanted = ray_containers(spec) + list(extra)
    if spec.get("enableInTreeAutoscaling"):
        wanted.append({"name": "autoscaler", **spec.get("autoscalerOptions", {})})
    problems = []
    for c in wanted:
        env = env_of(c)
        if env.get("RAY_AUTH_MODE", {}).get("value") != "token":
            problems.append(f"{c['name']}: RAY_AUTH_MODE is not 'token'")
        token = env.get("RAY_AUTH_TOKEN", {})
        ref = token.get("valueFrom", {}).get("secretKeyRef", {})
        if "value" in token or not (ref.get("name") and ref.get("key")):
            problems.append(f"{c['name']}: RAY_AUTH_TOKEN must come from a secretKeyRef")
    return problems


def gpu_limit(container: dict) -> float:
    return float(container.get("resources", {}).get("limits", {}).get(GPU, 0))


def gpu_group_problems(spec: dict) -> list[str]:
    problems = []
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling is not true")
    head = spec["headGroupSpec"]
    if str(head["rayStartParams"].get("num-gpus")) != "0":
        problems.append("the head must advertise num-gpus 0")
    if any(gpu_limit(c) for c in containers(head["template"])):
        problems.append("the head asks for a GPU")
    ports = {p["containerPort"] for c in containers(head["template"]) for p in c.get("ports", [])}
    if not {6379, 8265, 10001} <= ports:
        problems.append(f"head ports {sorted(ports)} lack one of 6379, 8265, 10001")
    groups = [g for g in spec.get("workerGroupSpecs", []) if any(gpu_limit(c) for c in containers(g["template"]))]
    if not groups:
        problems.append(f"no worker group with a {GPU} limit")
    for g in groups:
        pod, name = g["template"]["spec"], g["groupName"]
        if g.get("minReplicas") != 0 or g.get("maxReplicas", 0) < 1:
            problems.append(f"{name}: want minReplicas 0 and maxReplicas >= 1")
        if not g.get("replicas", 0) <= g.get("maxReplicas", 0):
            problems.append(f"{name}: replicas above maxReplicas")
        for c in containers(g["template"]):
            requests = c.get("resources", {}).get("requests", {})
            if GPU in requests and float(requests[GPU]) != gpu_limit(c):
                problems.append(f"{name}: {GPU} request differs from its limit")
        placement = list(pod.get("nodeSelector", {})) + [t.get("key", "") for t in pod.get("tolerations", [])]
        if not any("gpu" in key.lower() or "accelerator" in key.lower() for key in placement):
            problems.append(f"{name}: no GPU nodeSelector or toleration")
    return problems


def image_problem(ref: str) -> str | None:
    if "@sha256:" in ref:
        return None
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        return f"{ref}: no tag"
    if tag == "latest" or "$" in tag or not re.search(r"\d", tag):
        return f"{ref}: not pinned to a version tag"
    return None


def port_problems(service: dict) -> list[str]:
    problems = []
    for port in service.get("ports", []):
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
        if host_ip != "127.0.0.1":
            problems.append(f"port {port!r} is not bound to 127.0.0.1")
    return problems


def compose_secret_problems(env: dict) -> list[str]:
    """Secret-looking settings take their value only from a required `${VAR:?...}`."""
    problems = []
    for key, value in env.items():
        if not SECRET_NAME.search(key):
            continue
        value = str(value)
        secret = re.search(r"://[^:/@]+:([^@]*)@", value).group(1) if "://" in value else value
        if not REQUIRED_REF.fullmatch(secret):
            problems.append(f"{key}: not from a required ${{VAR:?...}}")
    return problems


def parse_dockerfile(path_or_text) -> list[tuple[str, str]]:
    text = path_or_text.read_text(encoding="utf-8") if isinstance(path_or_text, Path) else path_or_text
    text = re.sub(r"\\\n", " ", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def base_image(instructions) -> str:
    """The FROM image with the global ARG defaults substituted."""
    args = {}
    for op, rest in instructions:
        if op == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value.strip('"')
        if op == "FROM":
            return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), rest.split()[0])
    raise AssertionError("no FROM")


def arg_default(instructions, name: str) -> str:
    return next(r.split("=", 1)[1] for op, r in instructions if op == "ARG" and r.startswith(name + "="))


def env_settings(instructions) -> dict[str, str]:
    pairs = [p for op, rest in instructions if op == "ENV" for p in shlex.split(rest)]
    return dict(p.split("=", 1) for p in pairs)


def dockerfile_problems(instructions) -> list[str]:
    problems = []
    users = [rest.split(":")[0] for op, rest in instructions if op == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("the image ends as root (no non-root USER)")
    for op, rest in instructions:
        if op in ("COPY", "ADD"):
            sources = [w for w in rest.split() if not w.startswith("--")][:-1]
            for src in sources:
                if src in (".", "./", "*") or src.strip("./").startswith("models") or "://" in src:
                    problems.append(f"{op} {src}: may bake model weights into the image")
        if op == "RUN" and re.search(r"snapshot_download|hf download|huggingface-cli|from_pretrained", rest):
            problems.append("a RUN step downloads model weights")
    if env_settings(instructions).get("HF_HUB_OFFLINE") != "1":
        problems.append("HF_HUB_OFFLINE=1 is not set")
    if image_problem(base_image(instructions)):
        problems.append(image_problem(base_image(instructions)))
    return problems


LEAKS = {
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "AWS key id": r"\bAKIA[0-9A-Z]{16}\b",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{30,}",
    "Slack token": r"\bxox[abpr]-[A-Za-z0-9-]{10,}",
    "JWT": r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.",
    "Fernet key": r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}=",
    "long hex secret": r"(?<![0-9a-fA-F])[0-9a-fA-F]{32,}(?![0-9a-fA-F])",
    "credentials in a URL": r"://[^\s:/@${]+:(?!\$)[^\s@/]+@",
    "well-known password": r"(?i)(?:password|passwd|secret|token)\w*[\"']?\s*[:=]\s*[\"']?"
                           r"(?:airflow|admin|postgres|password|changeme|secret|raycluster_secret|123456)\b",
}


def leaked_secrets(text: str) -> list[str]:
    return [name for name, pattern in LEAKS.items() if re.search(pattern, text)]


# --- every manifest parses --------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml")),
                         ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_file_parses(path):
    docs = load_docs(path)
    assert docs, f"{path}: no documents"
    if path.parent == KUBERAY:
        for d in docs:
            assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), d


def test_the_files_the_readme_walks_through_exist():
    for name in ("README.md", "docker/Dockerfile", "docker/airflow.Dockerfile", "kuberay/raycluster.yaml",
                 "kuberay/rayjob.yaml", "kuberay/storage.yaml", "airflow/docker-compose.yaml",
                 "airflow/.env.example"):
        assert (INFRA / name).is_file(), name
    assert {d["kind"] for d in k8s_docs()} >= {"RayCluster", "RayJob", "PersistentVolumeClaim"}
    assert all(d["apiVersion"] == "ray.io/v1" for d in k8s_docs() if d["kind"].startswith("Ray"))


# --- KubeRay -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, spec", cluster_specs(), ids=[n for n, _ in cluster_specs()])
def test_cpu_head_and_autoscaling_gpu_group(name, spec):
    assert gpu_group_problems(spec) == []


def test_gpu_group_check_catches_a_fixed_or_gpu_less_group():
    _, spec = cluster_specs()[0]
    broken = copy.deepcopy(spec)
    for g in broken["workerGroupSpecs"]:
        g["minReplicas"] = 2
    assert any("minReplicas" in p for p in gpu_group_problems(broken))
    for c in ray_containers(broken):
        c.get("resources", {}).get("limits", {}).pop(GPU, None)
    assert any("no worker group" in p for p in gpu_group_problems(broken))


@pytest.mark.parametrize("name, spec", cluster_specs(), ids=[n for n, _ in cluster_specs()])
def test_ray_token_auth_from_a_secret_everywhere(name, spec):
    submitters = [c for j in of_kind("RayJob") if j["metadata"]["name"] == name
                  for c in containers(j["spec"].get("submitterPodTemplate", {"spec": {"containers": []}}))]
    assert token_auth_problems(spec, submitters) == []


def test_token_check_catches_an_inline_token():
    _, spec = cluster_specs()[0]
    broken = copy.deepcopy(spec)
    broken["headGroupSpec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "RAY_AUTH_MODE", "value": "token"}, {"name": "RAY_AUTH_TOKEN", "value": "s3cr3t"}]
    assert token_auth_problems(broken) == ["ray-head: RAY_AUTH_TOKEN must come from a secretKeyRef"]


def test_one_token_secret_and_the_readme_creates_it():
    refs = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for d in k8s_docs() for env in walk(d, "env") for e in env if e["name"] == "RAY_AUTH_TOKEN"}
    assert len(refs) == 1, refs
    (name, key), = refs
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    assert f"kubectl create secret generic {name} --from-literal={key}=" in readme


def test_no_literal_secret_in_any_kubernetes_env():
    for d in k8s_docs():
        for env in walk(d, "env"):
            for e in env:
                assert not (SECRET_NAME.search(e["name"]) and "value" in e), (d["metadata"]["name"], e)


def test_ray_pods_are_non_root_and_mount_models_read_only():
    claims = {d["metadata"]["name"] for d in of_kind("PersistentVolumeClaim")}
    for name, spec in cluster_specs():
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for t in templates:
            assert t["spec"]["securityContext"]["runAsNonRoot"] is True, name
            volumes = {v["name"]: v for v in t["spec"]["volumes"]}
            used_claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes.values()
                           if "persistentVolumeClaim" in v}
            assert used_claims <= claims, f"{name}: claims not in storage.yaml: {used_claims - claims}"
            for c in containers(t):
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, (name, c["name"])
                models = [m for m in c["volumeMounts"] if m["mountPath"] == "/models"]
                assert models and models[0]["readOnly"] is True, (name, c["name"])
                assert volumes[models[0]["name"]]["persistentVolumeClaim"]["readOnly"] is True


def test_ray_nodes_share_one_image_and_one_ray_version():
    instructions = parse_dockerfile(WORKER_DOCKERFILE)
    ray_version = arg_default(instructions, "RAY_VERSION")
    assert base_image(instructions).split(":")[1].startswith(ray_version)
    assert arg_default(parse_dockerfile(AIRFLOW_DOCKERFILE), "RAY_VERSION") == ray_version
    for name, spec in cluster_specs():
        assert spec["rayVersion"] == ray_version, name
        assert len({c["image"] for c in ray_containers(spec)}) == 1, name


def test_every_image_is_pinned():
    refs = [i for path in sorted(INFRA.rglob("*.yaml")) for d in load_docs(path) for i in walk(d, "image")]
    refs += [base_image(parse_dockerfile(p)) for p in DOCKERFILES]
    assert len(refs) > 5
    assert [image_problem(r) for r in refs if image_problem(r)] == []
    assert image_problem("rayproject/ray:latest") and image_problem("postgres") and image_problem("ray:${TAG}")


def test_rayjob_runs_synthcat_on_the_cluster_shape():
    from pipeline.cli import build_parser
    from pipeline.config import parse_job_config

    (job,) = of_kind("RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    # The driver stays on the CPU head; only the generate actors take GPUs.
    assert spec.get("entrypointNumGpus", 0) == 0
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["synthcat", "run"]
    args = build_parser().parse_args(argv[1:])
    assert args.manifest and args.config and args.out and args.run_date

    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    config_dir, config_file = args.config.rsplit("/", 1)
    config_map_name = volumes[mounts[config_dir]["name"]]["configMap"]["name"]
    (config_map,) = [d for d in of_kind("ConfigMap") if d["metadata"]["name"] == config_map_name]
    config = parse_job_config(yaml.safe_load(config_map["data"][config_file]), "rayjob ConfigMap")
    assert not mounts["/" + args.out.strip("/").split("/")[0]].get("readOnly")
    # The manifest is the example catalog the worker image copies to /opt/synthcat/examples.
    assert args.manifest.startswith("/opt/synthcat/examples/")
    assert (REPO / "examples" / Path(args.manifest).name).is_file()

    # The job's GPU demand fits the GPU group (an actor that cannot fit waits forever).
    (group,) = [g for g in spec["rayClusterSpec"]["workerGroupSpecs"]
                if gpu_limit(g["template"]["spec"]["containers"][0])]
    pod = group["template"]["spec"]["containers"][0]
    per_pod = gpu_limit(pod)
    stages = [config.resources.generate, config.resources.score, config.resources.encode]
    assert config.resources.generate.num_gpus > 0
    assert all(s.num_gpus <= per_pod and s.num_cpus <= float(pod["resources"]["limits"]["cpu"]) for s in stages)
    assert sum(s.actors * s.num_gpus for s in stages) <= group["maxReplicas"] * per_pod


# --- Airflow (docker compose) ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


AIRFLOW_COMMANDS = {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                    "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer"}


def test_airflow_services_commands_and_health(compose):
    services = compose["services"]
    assert set(services) >= {"postgres", "airflow-init", *AIRFLOW_COMMANDS}
    assert "db migrate" in str(services["airflow-init"]["command"])
    for name, command in AIRFLOW_COMMANDS.items():
        assert services[name]["command"] == command
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in services.items():
        if name != "airflow-init":
            assert service["healthcheck"]["test"], name
        assert not image_problem(service["image"]), name


def test_airflow_auth_config_and_execution_api(compose):
    services = compose["services"]
    for name in AIRFLOW_COMMANDS:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        manager = env["AIRFLOW__CORE__AUTH_MANAGER"]
        assert manager.endswith(("FabAuthManager", "SimpleAuthManager")), manager
        assert str(env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "false")).lower() == "false"
        assert str(env["AIRFLOW__API__EXPOSE_CONFIG"]).lower() == "false"
        url = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        api_port = str(services["airflow-apiserver"]["ports"][0]).rsplit(":", 1)[1]
        assert (url.hostname, str(url.port), url.path) == ("airflow-apiserver", api_port, "/execution/")


def test_ports_only_on_localhost(compose):
    assert "ports" not in compose["services"]["postgres"]
    assert compose["services"]["airflow-apiserver"]["ports"]
    for service in compose["services"].values():
        assert port_problems(service) == []
    assert port_problems({"ports": ["8080:8080", "0.0.0.0:5432:5432"]}) != []


def test_secrets_come_only_from_required_env_vars(compose):
    for name, service in compose["services"].items():
        assert compose_secret_problems(service.get("environment", {})) == [], name
    assert compose_secret_problems({"AIRFLOW__CORE__FERNET_KEY": "${AIRFLOW_FERNET_KEY:-abc}"})
    assert compose_secret_problems({"SQL_ALCHEMY_CONN": "postgresql://airflow:airflow@postgres/airflow"})
    text = compose_text()
    required = set(REQUIRED_REF.findall(text))
    assert required >= {"POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_API_SECRET_KEY",
                        "AIRFLOW_JWT_SECRET", "AIRFLOW_ADMIN_PASSWORD", "RAY_AUTH_TOKEN"}
    # No secret is ever read with a fallback (`${VAR:-x}`, `${VAR}`): a missing one must stop compose.
    for var in required:
        assert not re.search(r"\$\{" + var + r"(?:\}|:-|-)", text), var


def test_env_example_lists_every_required_variable_without_values():
    settings = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
                    if line.strip() and not line.startswith("#"))
    required = set(REQUIRED_REF.findall(compose_text()))
    assert required <= set(settings), required - set(settings)
    assert {k: v for k, v in settings.items() if SECRET_NAME.search(k) and v.strip()} == {}
    assert urlsplit(settings["RAY_ADDRESS"]).port == 8265
    assert ".env" in (INFRA / "airflow" / ".gitignore").read_text(encoding="utf-8").split()


def test_ray_settings_and_dags_reach_the_task_runner(compose):
    services = compose["services"]
    env = services["airflow-scheduler"]["environment"]
    assert env["RAY_AUTH_MODE"] == "token" and "RAY_ADDRESS" in env
    # The Ray token goes only where tasks run (LocalExecutor: the scheduler).
    assert [n for n, s in services.items() if "RAY_AUTH_TOKEN" in s.get("environment", {})] == ["airflow-scheduler"]
    for name in AIRFLOW_COMMANDS:
        dags_folder = services[name]["environment"]["AIRFLOW__CORE__DAGS_FOLDER"]
        mounts = [v.split(":") for v in services[name]["volumes"] if isinstance(v, str)]
        sources = [(COMPOSE_FILE.parent / m[0]).resolve() for m in mounts if m[1] == dags_folder]
        assert sources == [REPO / "dags"], name
        # The whole repository would expose infra/airflow/.env to every task.
        assert all((COMPOSE_FILE.parent / m[0]).resolve() != REPO for m in mounts), name
    build = services["airflow-scheduler"]["build"]
    assert (COMPOSE_FILE.parent / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]).resolve() == AIRFLOW_DOCKERFILE


# --- Dockerfiles ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_non_root_no_weights_offline_pinned(path):
    instructions = parse_dockerfile(path)
    assert dockerfile_problems(instructions) == []
    # The project itself is installed with pip, from where pyproject.toml was copied.
    (dest,) = [r.split()[-1].rstrip("/") for op, r in instructions if op == "COPY" and "pyproject.toml" in r]
    assert any(op == "RUN" and "pip install" in r and dest in r for op, r in instructions)
    # Build args and ENV end up in the image's layers: never a secret there.
    names = [r.split("=")[0] for op, r in instructions if op == "ARG"] + list(env_settings(instructions))
    assert not [n for n in names if SECRET_NAME.search(n)]


def test_dockerfile_check_catches_root_weights_and_online_hub():
    bad = parse_dockerfile("FROM python:latest\nCOPY models/ /models/\nRUN huggingface-cli download x\n")
    problems = dockerfile_problems(bad)
    assert len(problems) == 5, problems


def test_images_fit_their_role():
    worker = parse_dockerfile(WORKER_DOCKERFILE)
    assert re.search(r"gpu|cuda", base_image(worker))
    assert env_settings(worker)["SYNTHCAT_MODELS_DIR"] == "/models"
    assert re.fullmatch(r"apache/airflow:3\.\d+\.\d+-python3\.11", base_image(parse_dockerfile(AIRFLOW_DOCKERFILE)))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_build_context_is_an_allow_list(path):
    # BuildKit reads <Dockerfile>.dockerignore next to the Dockerfile for `-f` builds.
    patterns = [ln.strip() for ln in Path(f"{path}.dockerignore").read_text(encoding="utf-8").splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert patterns[0] == "*"
    allowed = [p[1:].strip("/") for p in patterns if p.startswith("!")]
    assert not [p for p in allowed if p.split("/")[0] in ("models", ".venv", "out", ".git", "infra") or ".env" in p]


# --- secrets: nothing under infra/ holds one ------------------------------------------------------

@pytest.mark.parametrize("path", sorted(p for p in INFRA.rglob("*") if p.is_file()),
                         ids=lambda p: str(p.relative_to(INFRA)))
def test_no_secret_in_infra_files(path):
    assert leaked_secrets(path.read_text(encoding="utf-8")) == []


def test_secret_scan_catches_real_looking_secrets():
    samples = ["AIRFLOW__CORE__FERNET_KEY: 'Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MDEyMzQ1Njc4OTA='",
               "auth_token: 3f2a9c0d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f",
               "POSTGRES_PASSWORD: airflow",
               "sql: postgresql://airflow:hunter2@postgres/airflow",
               "-----BEGIN RSA PRIVATE KEY-----"]
    assert all(leaked_secrets(s) for s in samples), [s for s in samples if not leaked_secrets(s)]
    assert leaked_secrets("postgresql://airflow:${POSTGRES_PASSWORD:?set it}@postgres/airflow") == []
