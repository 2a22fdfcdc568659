"""Secrets come from the environment (or a secrets backend) and never ride in DAG params, XCom or logs.

Ray token auth and Airflow authentication in infra/ are checked by tests/test_infra_kuberay.py
(`test_ray_token_auth_from_a_secret_everywhere`) and tests/test_infra_airflow.py
(`test_airflow_auth_config_and_execution_api`, `test_secrets_come_only_from_required_env_vars`);
this file covers the path a secret could take through the DAGs at run time.
"""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest
import yaml

from infra_checks import SECRET_NAME
from pipeline import orchestrate
from pipeline.errors import BadInputError

REPO = Path(__file__).resolve().parents[2]
SECRETS = {"RAY_AUTH_TOKEN": "ray-token-5f1c0d", "AIRFLOW__CORE__FERNET_KEY": "fernet-9a7b2e",
           "POSTGRES_PASSWORD": "pg-pass-33d1aa", "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-77aa90"}


def _param_names(dag_file: Path) -> list[str]:
    """The keys of the `params={...}` a DAG file declares."""
    for node in ast.walk(ast.parse(dag_file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.keyword) and node.arg == "params" and isinstance(node.value, ast.Dict):
            return [key.value for key in node.value.keys]
    return []


def test_no_dag_param_or_setting_holds_a_secret():
    names = _param_names(REPO / "dags" / "synthcat_on_demand.py")
    assert {"manifest", "config", "out"} <= set(names)
    settings = yaml.safe_load((REPO / "dags" / "synthcat.yaml").read_text(encoding="utf-8"))
    assert [n for n in [*names, *settings] if SECRET_NAME.search(n)] == []
    assert SECRET_NAME.search("RAY_AUTH_TOKEN")  # the pattern does recognise one


def _params(tmp_path: Path) -> dict:
    return {"manifest": str(REPO / "examples" / "catalog.csv"), "config": str(REPO / "examples" / "job.yaml"),
            "out": str(tmp_path / "out")}


def test_secrets_in_the_environment_never_reach_xcom_or_logs(monkeypatch, caplog, capsys, tmp_path):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RAY_ADDRESS", "http://ray-head:8265")
    caplog.set_level(logging.DEBUG)
    spec = orchestrate.make_spec(_params(tmp_path), dag_run_id="manual__1", run_date="2026-11-26")
    report = orchestrate.check_manifest(spec)
    seen = json.dumps([spec, report]) + caplog.text + "".join(capsys.readouterr())
    assert spec["ray_address"] == "http://ray-head:8265"
    assert [name for name, value in SECRETS.items() if value in seen] == []


def test_credentials_in_the_ray_address_are_refused_without_echoing_them(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_ADDRESS", f"https://admin:{SECRETS['RAY_AUTH_TOKEN']}@ray-head:8265")
    with pytest.raises(BadInputError, match="RAY_AUTH_TOKEN") as info:
        orchestrate.make_spec(_params(tmp_path), dag_run_id="manual__1", run_date="2026-11-26")
    assert SECRETS["RAY_AUTH_TOKEN"] not in str(info.value)


def test_ray_jobs_forward_no_secret_to_the_cluster():
    from pipeline.executor import HF_OFFLINE_ENV  # the runtime_env every submitted job gets

    assert HF_OFFLINE_ENV and not [name for name in HF_OFFLINE_ENV if SECRET_NAME.search(name)]
