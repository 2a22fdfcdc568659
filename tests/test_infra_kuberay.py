"""infra/: every manifest parses; the KubeRay cluster, job and storage hold what the README promises."""

from __future__ import annotations

import copy
import shlex

import pytest
import yaml

from infra_checks import *  # noqa: F403 - the shared parsers and checks

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


@pytest.mark.parametrize("name, spec", cluster_specs(), ids=[n for n, _ in cluster_specs()])
def test_gpu_workers_keep_compiled_kernels_on_a_shared_volume(name, spec):
    assert compile_cache_problems(spec) == []
    claims = {d["metadata"]["name"] for d in of_kind("PersistentVolumeClaim")}
    assert "synthcat-compile-cache" in claims


def test_compile_cache_check_catches_a_pod_local_or_shared_cache():
    _, spec = cluster_specs()[0]
    gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu-workers")

    def broken(change):
        s = copy.deepcopy(spec)
        change(next(g for g in s["workerGroupSpecs"] if g["groupName"] == "gpu-workers"), s)
        return compile_cache_problems(s)

    def no_env(g, _):
        g["template"]["spec"]["containers"][0]["env"] = [
            e for e in g["template"]["spec"]["containers"][0]["env"] if e["name"] != "TORCHINDUCTOR_CACHE_DIR"]

    def on_tmp(g, _):
        env = env_of(g["template"]["spec"]["containers"][0])["TORCHINDUCTOR_CACHE_DIR"]
        env["value"] = "/tmp/torchinductor"

    def empty_dir(g, _):
        for v in g["template"]["spec"]["volumes"]:
            if v["name"] == "compile-cache":
                v.pop("persistentVolumeClaim")
                v["emptyDir"] = {}

    def head_mounts_it(g, s):
        volume = next(v for v in g["template"]["spec"]["volumes"] if v["name"] == "compile-cache")
        s["headGroupSpec"]["template"]["spec"]["volumes"].append(copy.deepcopy(volume))

    assert any(v["name"] == "compile-cache" for v in gpu["template"]["spec"]["volumes"])
    assert "no TORCHINDUCTOR_CACHE_DIR" in broken(no_env)[0]
    assert "on no volume" in broken(on_tmp)[0]
    assert "not a persistent volume claim" in broken(empty_dir)[0]
    assert "without a GPU mounts" in broken(head_mounts_it)[0]


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


def test_the_seed_job_copies_the_images_tiny_preset_and_builds_its_reference_index():
    """The Ray pods mount /models read-only: whatever a run of the tiny preset writes there on first use
    (its training-set reference index) the seed Job must write, and it must never retrain the preset."""
    (job,) = [d for d in of_kind("Job") if d["metadata"]["name"] == "synthcat-models-seed"]
    (container,) = containers(job["spec"]["template"])
    script = container["command"][-1]
    (seed,) = [r.split()[-1] for op, r in parse_dockerfile(WORKER_DOCKERFILE)
               if op == "COPY" and r.split()[-2] == EMBEDDED_PRESET]
    assert f'shutil.copytree("{seed}", models / "tiny"' in script
    assert "ensure_training_reference(\"tiny\", models" in script
    compile(script, "seed", "exec")  # the Job's Python is valid
