"""How the project installs: every package is listed, the service has its own import name, and the library
never imports the service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _listed() -> dict[str, Path]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config.get("package-dir", {})
    listed = {}
    for name in config["packages"]:
        top, _, rest = name.partition(".")
        base = ROOT / mapping.get(top, top)
        listed[name] = base.joinpath(*rest.split(".")) if rest else base
    return listed


def test_every_package_in_the_tree_is_listed_for_the_wheel() -> None:
    listed = _listed()
    on_disk = {
        p.parent.resolve()
        for folder in ("ticketsolver", "api")
        for p in (ROOT / folder).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert {path.resolve() for path in listed.values()} == on_disk
    assert all((path / "__init__.py").is_file() for path in listed.values())


def test_the_service_installs_as_ticketsolver_api_not_as_a_generic_api_package() -> None:
    names = set(_listed())
    assert "ticketsolver_api" in names
    assert not any(name == "api" or name.startswith("api.") for name in names)


def test_the_library_and_its_cli_do_not_import_the_service() -> None:
    code = (
        "import sys, ticketsolver, ticketsolver.cli, ticketsolver.jobs; "
        "print(sorted(m for m in sys.modules if m.startswith(('ticketsolver_api', 'fastapi', 'api'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"


def test_the_service_contributes_the_serve_command_through_an_entry_point() -> None:
    code = (
        "import ticketsolver.cli as c; c._plugin_commands(); "
        "print([cmd.name for cmd in c.app.registered_commands if cmd.name == 'serve'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "['serve']"
