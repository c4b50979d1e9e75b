"""scripts/run_stack.py (`make run`): what it prints is what happened."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _run_stack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_stack", ROOT / "scripts/run_stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log(*records: dict[str, str]) -> str:
    return "\n".join(["not json", *(json.dumps(r) for r in records)]) + "\n"


def test_the_administrator_line_names_the_administrator_identity_made() -> None:
    env = {"ADMIN_EMAIL": "admin@example.com", "ADMIN_PASSWORD": "change-this-admin-password"}
    log = _log({"event": "admin_bootstrapped", "user_id": "…"})
    line = _run_stack().administrator_line(env, log)
    assert line == "  Administrator:    admin@example.com (password from ADMIN_PASSWORD)"


def test_the_administrator_line_says_why_identity_refused_it() -> None:
    # `make run ADMIN_PASSWORD=secret` used to print the address as if it could log in,
    # while identity had refused the password and made no administrator.
    env = {"ADMIN_EMAIL": "admin@example.com", "ADMIN_PASSWORD": "secret"}
    problem = "The password must be at least 12 characters long."
    log = _log(
        {"event": "service_starting"},
        {"event": "admin_bootstrap_refused", "variable": "ADMIN_PASSWORD", "problem": problem},
    )
    line = _run_stack().administrator_line(env, log)
    assert line is not None
    assert "admin@example.com (password from ADMIN_PASSWORD)" not in line
    assert "ADMIN_PASSWORD" in line and problem in line and ".run/identity.log" in line


def test_no_administrator_line_without_admin_email() -> None:
    assert _run_stack().administrator_line({}, "") is None
