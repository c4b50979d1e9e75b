"""The supply chain in `make test`: bandit finds nothing of high severity in our code, and
pip-audit finds no known vulnerability in the pinned dependencies. An audit that could
not look a dependency up fails: it must never pass by auditing nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PYPI = "https://pypi.org/pypi/{name}/json"


def pinned() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        spec = requirement.split(";", 1)[0].strip()
        name, _, version = spec.partition("==")
        assert version, f"{requirement!r} is not pinned with =="
        pins[name.strip().lower()] = version.strip()
    return pins


def test_bandit_finds_no_high_severity_issue() -> None:
    result = subprocess.run(
        [str(BIN / "bandit"), "-q", "-r", "services", "libs", "-lll"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _latest_vulnerabilities(name: str) -> tuple[str, list[object]]:
    """PyPI's project JSON: its latest version and the vulnerabilities known for it."""
    with urllib.request.urlopen(PYPI.format(name=name), timeout=20) as response:
        data = json.load(response)
    return data["info"]["version"], list(data.get("vulnerabilities") or [])


def test_pip_audit_finds_no_known_vulnerability_in_the_pins(tmp_path: Path) -> None:
    pins = pinned()
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
    result = subprocess.run(
        [
            str(BIN / "pip-audit"),
            "--requirement",
            str(requirements),
            "--no-deps",
            "--disable-pip",
            "--format",
            "json",
            "--progress-spinner",
            "off",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.stdout.strip(), (
        "pip-audit produced no report (is the vulnerability service reachable?):\n"
        + result.stderr[-2000:]
    )
    report = json.loads(result.stdout)
    vulnerable = {
        d["name"]: [v["id"] for v in d.get("vulns", [])]
        for d in report["dependencies"]
        if d.get("vulns")
    }
    assert not vulnerable, f"known vulnerabilities in pinned dependencies: {vulnerable}"
    assert result.returncode == 0, result.stderr[-2000:]
    # A dependency pip-audit skipped was not audited at all. Where PyPI's per-version JSON
    # is not served (some mirrors), its project JSON still lists the vulnerabilities of
    # the latest release: enough when we pin that release, and a clear failure otherwise.
    skipped = [d["name"] for d in report["dependencies"] if d.get("skip_reason")]
    unaudited = []
    for name in skipped:
        try:
            latest, vulns = _latest_vulnerabilities(name)
        except OSError as exc:
            raise AssertionError(f"PyPI unreachable, {name} was not audited: {exc}") from None
        if latest != pins.get(name.lower()):
            unaudited.append(f"{name}=={pins.get(name.lower())} (latest {latest})")
        elif vulns:
            vulnerable[name] = [str(v) for v in vulns]
    assert not vulnerable, f"known vulnerabilities in pinned dependencies: {vulnerable}"
    assert not unaudited, (
        "pip-audit could not audit these pins and they are not PyPI's latest release, so "
        f"nothing vouches for them: {unaudited}"
    )
    assert len(report["dependencies"]) == len(pins)
