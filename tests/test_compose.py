"""deploy/compose.yaml and deploy/Dockerfile, read as Docker would read them (Docker itself is not
on the test machines): the services of a scaled-out studio, the variables that connect them,
that every DALI_* variable is one the studio reads, and nothing published beyond 127.0.0.1."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from stable_diffusion_api.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# Issue 20's variables, added by the other parts of that work (nodes, storage).
SCALE_OUT_VARIABLES = {"DALI_RUN_WORKERS", "DALI_NODE_NAME", "DALI_STORAGE_URL"}
SHARED = ("DALI_DATABASE_URL", "DALI_STORAGE_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
          "AWS_SECRET_ACCESS_KEY", "AWS_REGION")  # fmt: skip
# What a filled-in deploy/.env holds.
ENV = {"POSTGRES_PASSWORD": "pg-secret", "MINIO_ROOT_USER": "dali",
       "MINIO_ROOT_PASSWORD": "minio-secret"}  # fmt: skip

_REFERENCE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class Unset(Exception):
    """A `${NAME:?message}` whose NAME is unset: compose refuses to start, saying `message`."""


def interpolate(value: str, env: dict[str, str]) -> str:
    """`value` as compose reads it: `$$` is a literal `$`; `${NAME}`, `${NAME:-default}` and
    `${NAME:?message}` from `env` (no nesting, which this file does not use)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        if env.get(name):
            return env[name]
        if op in (":?", "?"):
            raise Unset(f"{name}: {arg}")
        return arg or "" if op in (":-", "-") else ""

    return _REFERENCE.sub(replace, value)


def resolved(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolved(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolved(item, env) for key, item in node.items()}
    return node


@pytest.fixture(scope="module")
def text() -> str:
    return (DEPLOY / "compose.yaml").read_text()


@pytest.fixture(scope="module")
def services(text: str) -> dict[str, Any]:
    compose = resolved(yaml.safe_load(text), ENV)
    assert set(compose["volumes"]) >= {"postgres-data", "minio-data", "web-data"}
    found: dict[str, Any] = compose["services"]
    return found


def command(service: dict[str, Any]) -> str:
    parts = [*service.get("entrypoint", []), *service.get("command", [])]
    return " ".join(parts)


def test_the_services_of_a_scaled_out_studio(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "minio", "create-bucket", "web", "worker"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["minio"]["image"].startswith("minio/minio:RELEASE.")
    assert services["create-bucket"]["image"].startswith("minio/mc:RELEASE.")
    assert services["create-bucket"]["restart"] == "no"  # one shot
    web, worker = services["web"], services["worker"]
    assert command(web) == "python -m stable_diffusion_api"
    assert web["environment"]["DALI_RUN_WORKERS"] == "false"
    assert command(worker).endswith("exec python -m stable_diffusion_api worker")
    for service in (web, worker):
        assert service["build"] == {**service["build"], "context": "..",
                                    "dockerfile": "deploy/Dockerfile"}  # fmt: skip
        assert (DEPLOY / ".." / service["build"]["dockerfile"]).is_file()


def test_web_and_workers_share_the_database_and_the_store(services: dict[str, Any]) -> None:
    web, worker = services["web"]["environment"], services["worker"]["environment"]
    assert {name: web[name] for name in SHARED} == {name: worker[name] for name in SHARED}
    database = make_url(web["DALI_DATABASE_URL"])
    assert (database.drivername, database.host, database.port) == (
        "postgresql+psycopg",
        "postgres",
        5432,
    )
    assert (database.username, database.password, database.database) == (
        "dali",
        "pg-secret",
        "dali",
    )
    postgres = services["postgres"]["environment"]
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]) == (
        "dali", "pg-secret", "dali")  # fmt: skip
    # The store: the bucket the one-shot makes, on the MinIO service, with its credentials.
    store = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]+)/(\S+)", web["DALI_STORAGE_URL"])
    assert store is not None, web["DALI_STORAGE_URL"]
    assert f"mc mb --ignore-existing store/{store.group(1)}" in command(services["create-bucket"])
    assert web["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert (web["AWS_ACCESS_KEY_ID"], web["AWS_SECRET_ACCESS_KEY"]) == ("dali", "minio-secret")
    assert web["AWS_REGION"]


def test_the_worker_scales_with_a_gpu_and_a_name_of_its_own(services: dict[str, Any]) -> None:
    worker = services["worker"]
    # `--scale` refuses a fixed container name, and replicas cannot share a published port.
    assert "container_name" not in worker and "ports" not in worker
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    # Each replica is named after its container unless DALI_NODE_NAME is given.
    assert 'DALI_NODE_NAME="${DALI_NODE_NAME:-worker-$(hostname)}"' in command(worker)
    assert "/data" in worker["volumes"]  # an anonymous volume: a cache per replica
    assert any(v.endswith(":/models:ro") for v in worker["volumes"])


def test_services_start_in_order(services: dict[str, Any]) -> None:
    for name in ("web", "worker"):
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "create-bucket": {"condition": "service_completed_successfully"},
        }
    assert services["create-bucket"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    for name, service in services.items():
        for needed, how in service.get("depends_on", {}).items():
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[needed], f"{name} waits for {needed}'s health"


def test_nothing_is_published_beyond_this_host(services: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert published["web"] == ["127.0.0.1:8000:8000"]
    assert all(port.startswith("127.0.0.1:") for ports in published.values() for port in ports)


def test_secrets_have_no_defaults_and_compose_refuses_to_start_without_them(text: str) -> None:
    compose = yaml.safe_load(text)
    for name in ENV:
        unset = {key: value for key, value in ENV.items() if key != name}
        with pytest.raises(Unset, match=f"{name}: set {name} in deploy/.env"):
            resolved(compose, unset)
    # Every variable without a default is in deploy/env.example, for deploy/.env.
    required = {m.group("name") for m in _REFERENCE.finditer(text) if m.group("op") == ":?"}
    example = (DEPLOY / "env.example").read_text()
    listed = {
        line.split("=", 1)[0]
        for line in example.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert required == set(ENV) and required <= listed
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def test_every_dali_variable_is_one_the_studio_reads(text: str, services: dict[str, Any]) -> None:
    known = {f"DALI_{name.upper()}" for name in Settings.model_fields} | SCALE_OUT_VARIABLES
    used = set(re.findall(r"\bDALI_[A-Z0-9_]+", text + (DEPLOY / "Dockerfile").read_text()))
    assert used >= SCALE_OUT_VARIABLES | {"DALI_DATABASE_URL", "DALI_DATA_DIR", "DALI_MODELS_DIR"}
    assert used - known == set()


@pytest.mark.parametrize("name", ["web", "worker"])
def test_the_settings_accept_each_service_s_values(
    services: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in [v for v in os.environ if v.startswith("DALI_")]:  # the developer's own
        monkeypatch.delenv(variable)
    environment = services[name]["environment"]
    for variable, value in environment.items():
        monkeypatch.setenv(variable, str(value))
    settings = Settings()
    assert settings.resolved_database_url == environment["DALI_DATABASE_URL"]
    assert settings.data_dir == Path("/data") and settings.models_dir == Path("/models")
    if name == "web":  # listens on every interface in its container, published on 127.0.0.1
        assert (settings.host, settings.port) == ("0.0.0.0", 8000)


def test_the_image_installs_the_pinned_torch_and_only_the_code(text: str) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    # torch comes at the line requirements.txt pins, from the index the build names.
    pattern = re.search(r"grep -E '(\^torch==)' requirements.txt", dockerfile)
    assert pattern is not None
    pins = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
            if re.match(pattern.group(1), line)]  # fmt: skip
    assert len(pins) == 1 and re.fullmatch(r"torch==\d+\.\d+\.\d+", pins[0])
    assert '--index-url "$TORCH_INDEX_URL"' in dockerfile
    assert 'pip install -r requirements.txt "psycopg[binary]==' in dockerfile
    assert "TORCH_INDEX_URL: https://download.pytorch.org/whl/cpu" in text  # the web image
    assert re.search(r"^USER dali$", dockerfile, re.MULTILINE)
    # The build context leaves out everything but the code and the shipped data.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("**")] == "**"
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert kept >= {"requirements.txt", "stable_diffusion_api", "sd_core", "templates", "static",
                    "data/clip", "data/models/dali-tiny.safetensors"}  # fmt: skip
    assert all((ROOT / path).exists() for path in kept)
    assert not any(path in kept for path in ("data", "data/models", "data/images", ".venv"))
