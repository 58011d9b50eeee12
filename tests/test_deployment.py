"""The docker/ deployment: the compose file is valid and every container runs an entry point this checkout has.

No Docker engine is needed: the compose file is read as YAML (and checked by ``docker-compose config`` where
that binary exists), the commands of its services are parsed by the real CLI, and the environment it passes
to the API is read by the real service settings.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from ticketsolver.cli import _plugin_commands, app
from ticketsolver.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_compose_declares_the_api_a_ray_head_scalable_workers_and_a_store_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"api", "ray-head", "ray-worker"} <= set(services)
    assert "replicas" in services["ray-worker"]["deploy"]
    assert any(v.startswith("data:/data") for v in services["api"]["volumes"])
    assert "data" in compose["volumes"]
    for name in ("api", "ray-head", "ray-worker", "ray-worker-gpu"):
        assert services[name]["healthcheck"]["test"], name


def test_every_dockerfile_the_compose_file_builds_exists_and_copies_only_existing_paths(
    compose: dict[str, Any],
) -> None:
    dockerfiles = {s["build"]["dockerfile"] for s in compose["services"].values() if "build" in s}
    assert dockerfiles == {"docker/Dockerfile", "docker/Dockerfile.cuda"}
    for dockerfile in dockerfiles:
        text = (ROOT / dockerfile).read_text()
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
                for path in words[1:-1]:
                    assert (ROOT / path).exists(), f"{dockerfile} copies {path}, which is not in the repository"
        # torch comes from the CPU/CUDA wheel index at the version constraints.txt pins
        assert "grep -E '^torch==' constraints.txt" in text


def test_the_api_container_runs_the_serve_command_of_this_cli(compose: dict[str, Any]) -> None:
    command = _command(compose["services"]["api"])
    assert command[:2] == ["ticketsolver", "serve"]
    _plugin_commands()  # what main() does: the service contributes `serve` through its entry point
    click_app = typer.main.get_command(app)
    ctx = click_app.make_context("ticketsolver", command[1:], resilient_parsing=False)
    sub = click_app.get_command(ctx, "serve")
    assert sub is not None
    params = sub.make_context("serve", command[2:]).params
    assert params["host"] == "0.0.0.0" and params["port"] == 8000 and params["executor"] == "ray"


def _expand_defaults(value: object) -> str:
    """A compose value as the shell expands it with no variable set: ``${VAR:-default}`` -> default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def _compose_settings(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, **overrides: str) -> Any:
    """The service settings the api container reads with the compose defaults (and ``overrides``)."""
    from ticketsolver_api.settings import Settings

    for key in [k for k in os.environ if k.startswith("TICKETSOLVER_")]:
        monkeypatch.delenv(key)
    known = set(Settings.model_fields)
    for key, value in compose["services"]["api"]["environment"].items():
        if key.startswith("TICKETSOLVER_"):
            assert key.removeprefix("TICKETSOLVER_").lower() in known, f"{key} is not a setting"
            monkeypatch.setenv(key, _expand_defaults(value))
    for key, value in overrides.items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_the_api_environment_is_read_by_the_service_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _compose_settings(compose, monkeypatch)
    assert settings.ray_address == "ray://ray-head:10001"
    assert settings.token is None  # an empty TICKETSOLVER_TOKEN means no token, never the empty token
    assert settings.allow_no_token is False
    assert settings.retention_days is None  # an empty TICKETSOLVER_RETENTION_DAYS keeps every job
    assert settings.cors_origins == []
    assert settings.max_upload_bytes == 64 * 1024**2


def test_the_api_port_is_published_on_the_hosts_loopback_only_by_default(compose: dict[str, Any]) -> None:
    (published,) = compose["services"]["api"]["ports"]
    assert _expand_defaults(published) == "127.0.0.1:8000:8000"


def test_the_api_container_refuses_to_serve_without_a_token_unless_told_so(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ticketsolver_api.server import check_exposure

    command = _command(compose["services"]["api"])
    host = command[command.index("--host") + 1]
    assert host == "0.0.0.0"
    with pytest.raises(ConfigError, match="refusing to serve on 0.0.0.0 without authentication.*TICKETSOLVER_TOKEN"):
        check_exposure(host, _compose_settings(compose, monkeypatch))
    check_exposure(host, _compose_settings(compose, monkeypatch, TICKETSOLVER_TOKEN="s3cret"))
    check_exposure(host, _compose_settings(compose, monkeypatch, TICKETSOLVER_ALLOW_NO_TOKEN="true"))


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed here")
def test_docker_compose_config_accepts_the_file() -> None:
    run = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
