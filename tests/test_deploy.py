"""How to run tunelab on a cluster: deploy/compose.yaml and deploy/kubernetes/*.yaml, validated
offline against the Compose specification and the Kubernetes API's schemas (no cluster, no
Docker engine here), with secrets only from the platform's store, never on a command line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
KUBERNETES = "1.30.0"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_kubernetes_manifest_validates_against_the_api_schema(path: Path) -> None:
    import kubernetes_validate

    for document in documents(path):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_the_compose_file_validates_against_the_compose_specification() -> None:
    from compose_spec import PyCompose

    compose = PyCompose.from_yaml((DEPLOY / "compose.yaml").read_text())
    spec = compose.to_spec()  # the full ComposeSpecification schema
    assert spec.services is not None
    assert set(spec.services) == {"postgres", "mlflow", "worker"}


def containers() -> list[dict[str, Any]]:
    found = []
    for path in MANIFESTS:
        for document in documents(path):
            pod = document.get("spec", {}).get("template", {}).get("spec", {})
            found.extend(pod.get("containers", []))
    return found


def test_secrets_come_from_the_secret_store_and_never_reach_a_command_line() -> None:
    images = [c for c in containers() if c["image"].startswith("tunelab")]
    assert images, "the services and workers run the tunelab image"
    for container in containers():
        line = " ".join(container.get("args", []) + container.get("command", []))
        assert "password" not in line.lower() and "postgresql" not in line
        for variable in container.get("env", []):
            if "PASSWORD" in variable["name"]:
                assert "value" not in variable  # only from the Secret
                assert variable["valueFrom"]["secretKeyRef"]["name"] == "tunelab-db"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        command = " ".join(service.get("command", []))
        assert "password" not in command.lower(), name
        assert "db_password" in service.get("secrets", []), name
    worker = next(d for p in MANIFESTS for d in documents(p) if d["kind"] == "Job")
    assert worker["spec"]["parallelism"] > 1


def test_the_entrypoint_puts_the_password_into_the_environment_only(tmp_path: Path) -> None:
    secret = tmp_path / "db_password"
    secret.write_text("s3cret-for-the-test")
    probe = (
        "import os; print(os.environ['TUNELAB_OPTUNA_STORAGE']); "
        "print(open('/proc/self/cmdline').read())"
    )
    env = {
        "PATH": os.environ["PATH"],
        "TUNELAB_DB_PASSWORD_FILE": str(secret),
        "TUNELAB_DB_HOST": "db.test",
    }
    done = subprocess.run(
        ["bash", str(DEPLOY / "entrypoint.sh"), "python3", "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    storage, cmdline = done.stdout.splitlines()[:2]
    assert storage == "postgresql+psycopg://tunelab:s3cret-for-the-test@db.test:5432/optuna"
    assert "s3cret" not in cmdline
    refused = subprocess.run(
        ["bash", str(DEPLOY / "entrypoint.sh"), "true"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2 and "no database password" in refused.stderr
