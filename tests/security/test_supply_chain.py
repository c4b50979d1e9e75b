"""The supply chain in `make test`: the lock files pin the whole dependency tree with hashes
and agree with pyproject.toml; the runtime lock installs on its own in a fresh virtualenv;
bandit finds nothing of high severity in our code; pip-audit finds no known vulnerability
anywhere in the locked tree. An audit that could not look a dependency up fails: it must
never pass by auditing nothing."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
import urllib.request
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PYPI = "https://pypi.org/pypi/{name}/json"
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
BROWSER_PACKAGE = ROOT / "tests" / "browser" / "package.json"
BROWSER_LOCK = ROOT / "tests" / "browser" / "package-lock.json"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def declared() -> tuple[dict[str, str], dict[str, str]]:
    """pyproject.toml's pins: (runtime, dev)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def pins(requirements: list[str]) -> dict[str, str]:
        found = {}
        for requirement in requirements:
            spec = requirement.split(";", 1)[0].strip()
            name, _, version = spec.partition("==")
            assert version, f"{requirement!r} is not pinned with =="
            found[_name(name.strip())] = version.strip()
        return found

    return pins(project["dependencies"]), pins(project["optional-dependencies"]["dev"])


def locked(path: Path) -> dict[str, tuple[str, int]]:
    """A lock file's entries: name -> (version, how many hashes)."""
    entries: dict[str, tuple[str, int]] = {}
    current = ""
    for line in path.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            current = _name(match.group(1))
            entries[current] = (match.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = entries[current]
            entries[current] = (version, hashes + 1)
    return entries


def test_the_lock_files_pin_the_whole_tree_with_hashes_as_pyproject_says() -> None:
    runtime, dev = declared()
    runtime_lock, dev_lock = locked(RUNTIME_LOCK), locked(DEV_LOCK)
    assert len(runtime_lock) > len(runtime), "the runtime lock holds the transitive tree too"
    for entries in (runtime_lock, dev_lock):
        unhashed = [name for name, (_, hashes) in entries.items() if hashes == 0]
        assert not unhashed, f"locked without a hash: {unhashed}"
    stale = {
        name: (version, runtime_lock.get(name, ("missing", 0))[0])
        for name, version in runtime.items()
        if runtime_lock.get(name, ("", 0))[0] != version
    }
    stale |= {
        name: (version, dev_lock.get(name, ("missing", 0))[0])
        for name, version in (runtime | dev).items()
        if dev_lock.get(name, ("", 0))[0] != version
    }
    assert not stale, f"pyproject.toml and the lock files disagree (run `make lock`): {stale}"
    # The tests and tools run on exactly the runtime tree the image ships.
    drift = {
        name: (version, dev_lock.get(name, ("missing", 0))[0])
        for name, (version, _) in runtime_lock.items()
        if dev_lock.get(name, ("", 0))[0] != version
    }
    assert not drift, f"the dev lock drifts from the runtime lock: {drift}"


@pytest.mark.integration
def test_the_browser_tests_javascript_is_pinned_with_integrity_hashes() -> None:
    """axe-core (what check_accessible runs) comes from npm ci: an exact version in
    package.json, and every package of the lock with the sha512 npm checks it against."""
    declared_js = json.loads(BROWSER_PACKAGE.read_text())["devDependencies"]
    unpinned = {n: v for n, v in declared_js.items() if not re.fullmatch(r"\d+\.\d+\.\d+", v)}
    assert not unpinned, f"tests/browser/package.json: not an exact version: {unpinned}"
    lock = json.loads(BROWSER_LOCK.read_text())
    assert lock["packages"][""]["devDependencies"] == declared_js, "run npm install there"
    packages = {path: entry for path, entry in lock["packages"].items() if path}
    assert packages, "the lock holds no package"
    unhashed = [p for p, e in packages.items() if not e.get("integrity", "").startswith("sha512-")]
    assert not unhashed, f"locked without a sha512 integrity hash: {unhashed}"
    for name, version in declared_js.items():
        assert packages[f"node_modules/{name}"]["version"] == version


def test_the_runtime_lock_installs_alone_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """What the Dockerfile does: the locked tree with --require-hashes, nothing resolved
    beyond it, and `pip check` finds every requirement met."""
    venv.create(tmp_path / "venv", with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    installed = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--require-hashes",
            "--no-deps",
            "-r",
            str(RUNTIME_LOCK),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    checked = subprocess.run(
        [python, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


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


def _held_back(name: str, version: str | None) -> list[str]:
    """The installed distributions that require exactly ``name==version``: a pin the tree
    can't move to a newer release until they do (opentelemetry-sdk 1.45.2 requires
    opentelemetry-api==1.45.2 while PyPI's latest api is 1.45.3)."""
    held = []
    for dist in importlib.metadata.distributions():
        if _name(str(dist.metadata["Name"])) == "clientpress":
            continue  # our own pins are what is being vouched for
        for raw in dist.requires or []:
            req = Requirement(raw)
            if _name(req.name) == _name(name) and str(req.specifier) == f"=={version}":
                held.append(str(dist.metadata["Name"]))
    return sorted(held)


def test_pip_audit_finds_no_known_vulnerability_in_the_locked_tree() -> None:
    pins = {name: version for name, (version, _) in locked(DEV_LOCK).items()}
    result = subprocess.run(
        [
            str(BIN / "pip-audit"),
            "--requirement",
            str(DEV_LOCK),
            "--require-hashes",
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
    assert not vulnerable, f"known vulnerabilities in the locked tree: {vulnerable}"
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
        pinned = pins.get(_name(name))
        if latest != pinned and not _held_back(name, pinned):
            unaudited.append(f"{name}=={pinned} (latest {latest})")
        elif vulns:
            vulnerable[name] = [str(v) for v in vulns]
    assert not vulnerable, f"known vulnerabilities in the locked tree: {vulnerable}"
    assert not unaudited, (
        "pip-audit could not audit these pins and they are not PyPI's latest release, so "
        f"nothing vouches for them: {unaudited}"
    )
    assert len(report["dependencies"]) == len(pins)
