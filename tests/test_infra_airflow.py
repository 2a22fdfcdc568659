"""infra/: Airflow on docker compose, the Dockerfiles, and no secret anywhere."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import yaml

from infra_checks import *  # noqa: F403 - the shared parsers and checks

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
    # the DAG files read their settings where pipeline.orchestrate looks: <PYTHONPATH>/dags
    common = services["airflow-scheduler"]
    targets = {v.split(":")[1]: (COMPOSE_FILE.parent / v.split(":")[0]).resolve()
               for v in common["volumes"] if isinstance(v, str) and not v.startswith("$")}
    assert targets[f"{common['environment']['PYTHONPATH']}/dags"] == REPO / "dags"
    # the weights where tasks read them, mounted at that same path read-only: by default the path
    # the Ray pods mount them at (infra/kuberay: /models), the host's own path for a Ray on this host
    models_dir = common["environment"]["SYNTHCAT_MODELS_DIR"]
    assert models_dir == "${SYNTHCAT_MODELS_DIR:-/models}"
    assert [v for v in common["volumes"] if isinstance(v, str) and v.endswith(f"}}:{models_dir}:ro")]
    assert "SYNTHCAT_MODELS_DIR=/models" in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    # Airflow's tasks and the Ray side write the same run folders: one owner, the pods' uid by default
    pods = [doc for doc in yaml.safe_load_all((KUBERAY / "raycluster.yaml").read_text()) if doc and doc["kind"] == "RayCluster"]
    pod_uids = {group["template"]["spec"]["securityContext"]["runAsUser"]
                for spec in pods for group in [spec["spec"]["headGroupSpec"], *spec["spec"]["workerGroupSpecs"]]}
    assert pod_uids == {1000}
    assert {services[name].get("user") for name in [*AIRFLOW_COMMANDS, "airflow-init"]} == {"${AIRFLOW_UID:-1000}:0"}
    assert "AIRFLOW_UID=1000" in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    assert "SYNTHCAT_DATA_DIR" in common["environment"]  # relative `out` paths land on the shared folder
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
    assert not [p for p in allowed if p.split("/")[0] in ("models", ".venv", "out", ".git", "infra") or ".env" in p
                if p != EMBEDDED_PRESET]  # only the committed tiny preset, for the models volume's seed Job


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
