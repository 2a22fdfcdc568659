"""Parsers and property checks for the files under infra/ (used by the test_infra_* modules).

Each check returns a list of problems, so tests can also feed it broken input.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

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


def gpu_groups(spec: dict) -> list[dict]:
    """The worker groups whose pods have a container with a GPU limit."""
    return [g for g in spec.get("workerGroupSpecs", []) if any(gpu_limit(c) for c in containers(g["template"]))]


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
    groups = gpu_groups(spec)
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


def compile_cache_problems(spec: dict) -> list[str]:
    """Every GPU container keeps torch.compile's cache (TORCHINDUCTOR_CACHE_DIR) on a persistent
    volume it can write, and no other pod of the cluster mounts that volume."""
    problems, cache_claims, groups = [], set(), gpu_groups(spec)
    for g in groups:
        volumes = {v["name"]: v for v in g["template"]["spec"].get("volumes", [])}
        for c in filter(gpu_limit, containers(g["template"])):
            where = f"{g['groupName']}/{c['name']}"
            path = env_of(c).get("TORCHINDUCTOR_CACHE_DIR", {}).get("value")
            mounts = [m for m in c.get("volumeMounts", [])
                      if path and (path + "/").startswith(m["mountPath"].rstrip("/") + "/")]
            mount = max(mounts, key=lambda m: len(m["mountPath"]), default=None)
            claim = volumes.get(mount["name"], {}).get("persistentVolumeClaim") if mount else None
            if not path:
                problems.append(f"{where}: no TORCHINDUCTOR_CACHE_DIR")
            elif not mount:
                problems.append(f"{where}: {path} is on no volume (a fresh pod's own disk)")
            elif not claim:
                problems.append(f"{where}: {path} is on volume {mount['name']}, not a persistent volume claim")
            elif mount.get("readOnly") or claim.get("readOnly"):
                problems.append(f"{where}: {path} is read-only")
            else:
                cache_claims.add(claim["claimName"])
    others = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])
                                                    if g not in groups]
    for t in others:
        shared = {v["persistentVolumeClaim"]["claimName"] for v in t["spec"].get("volumes", [])
                  if "persistentVolumeClaim" in v} & cache_claims
        if shared:
            problems.append(f"a pod without a GPU mounts the compile cache {sorted(shared)}")
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


EMBEDDED_PRESET = "models/tiny"


def dockerfile_problems(instructions) -> list[str]:
    problems = []
    users = [rest.split(":")[0] for op, rest in instructions if op == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("the image ends as root (no non-root USER)")
    for op, rest in instructions:
        if op in ("COPY", "ADD"):
            sources = [w for w in rest.split() if not w.startswith("--")][:-1]
            for src in sources:
                # the one exception: the project's own committed tiny preset, which the worker image
                # carries only for the Job that seeds the models volume (infra/kuberay/storage.yaml)
                if src.strip("./") == EMBEDDED_PRESET:
                    continue
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
