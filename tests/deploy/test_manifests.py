"""Packaging checks: the Dockerfile, the compose stack, the Kubernetes manifests, and the
configuration variables they name, against each other and against the settings models.

Needs the `docker-compose` (Debian package, v1) and `kubectl` binaries; no Docker engine
and no cluster. `docker compose` (v2) is exercised too when it is installed.
"""

from __future__ import annotations

import fnmatch
import http.server
import importlib
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.common import broker
from libs.common.service_auth import (
    COMPOSE_PUBLIC_VARIABLE,
    compose_variable,
    generate,
    keygen_lines,
    parse_public_table,
)
from libs.common.settings import CommonSettings
from services.gateway.domain import parse_networks
from tests.support.env import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
# The deploying guide; the README's Deploying chapter sums up and links to it.
DEPLOYING = ROOT / "docs" / "deploying.md"
K8S_BASE = DEPLOY / "k8s" / "base"
K8S_LOCAL = DEPLOY / "k8s" / "overlays" / "local"
K8S_MONITORING = DEPLOY / "k8s" / "components" / "monitoring"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"
HEALTHCHECK = DEPLOY / "healthcheck.py"

PORTS = {"gateway": 8080, "identity": 8101, "portals": 8102, "invitations": 8103, "mailer": 8104}
# /healthz, /readyz, /metrics: never on the public port, never behind a Service or Ingress.
MANAGEMENT_PORTS = {
    "gateway": 9080,
    "identity": 9101,
    "portals": 9102,
    "invitations": 9103,
    "mailer": 9104,
}
SERVICES = tuple(PORTS)
SCHEMA_SERVICES = ("identity", "portals", "invitations", "mailer", "gateway")
BACKING = {"postgres", "rabbitmq", "mailpit"}
# compose's one-shot containers of the clientpress image, before the services start
ONE_SHOTS = {"migrate", "broker-setup", "database-setup"}
# Names that are not service settings but belong to the packaging itself.
IMAGE_VARIABLES = {"SERVICE"}  # picks the service in the image's entrypoint
COMPOSE_ONLY_PREFIX = "CLIENTPRESS_"  # compose's own knobs (image tag, env file)
# Secrets a service gets only for itself (compose passes them per service from deploy/.env,
# never through the shared env file; k8s mounts each into its own Deployment only).
OWN_SECRETS = {
    **{f"{s.upper()}_BROKER_PASSWORD": {s} for s in PORTS},
    # compose's one-shot `migrate` runs every schema's migrations, each as its own role
    **{f"{s.upper()}_DATABASE_PASSWORD": {s, "migrate"} for s in PORTS},
    "MAIL_JOB_KEY": {"identity", "invitations", "mailer"},
    "WEBHOOK_SECRET_KEY": {"mailer"},
    "ADMIN_PASSWORD": {"identity"},
    "GATEWAY_API_KEY": {"gateway"},
    # the relay's login: in the shared env file every container would read it
    "SMTP_PASSWORD": {"mailer"},
}
# Own secrets compose passes when deploy/.env has them, and `make secrets` does not write.
OPTIONAL_COMPOSE_SECRETS = {"SMTP_PASSWORD"}
SECRET_NAMES = {"DATABASE_URL", "AMQP_URL", "SMTP_PASSWORD", *OWN_SECRETS}
# What `make secrets` writes to deploy/.env (compose's ${...} need them).
COMPOSE_SECRETS = {
    **{name: f"test-{name.lower()}" for name in set(OWN_SECRETS) - OPTIONAL_COMPOSE_SECRETS},
    "BROKER_ADMIN_PASSWORD": "test-broker-admin",
    "POSTGRES_ADMIN_PASSWORD": "test-postgres-admin",
    "CRM_BROKER_PASSWORD": "test-crm",
}
# The README's architecture table: who calls whose internal HTTP API.
CALLS = {
    "gateway": {"identity", "portals", "invitations", "mailer"},
    "invitations": {"identity", "portals"},
    "identity": set(),
    "portals": set(),
    "mailer": set(),
}
# The port serving /metrics: the management port, which no Service or Ingress exposes.
METRICS_PORTS = MANAGEMENT_PORTS
SERVICE_KEYS_SECRET = "clientpress-service-keys"


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    # compose's own variables from the caller's shell would change what is rendered
    env = {k: v for k, v in os.environ.items() if not k.startswith(COMPOSE_ONLY_PREFIX)}
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False, **kwargs
    )


def require_binary(name: str, how: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed; CI installs it with {how}", pytrace=False)
    return path


# ---------------------------------------------------------------------------------------
# the configuration variables: what the code reads
# ---------------------------------------------------------------------------------------


def settings_env_names(cls: type[Any]) -> set[str]:
    prefix = str(cls.model_config.get("env_prefix") or "")
    names = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        names.add((alias or f"{prefix}{name}").upper())
    return names


@cache
def common_names() -> frozenset[str]:
    return frozenset(settings_env_names(CommonSettings))


@cache
def documented_service_names() -> frozenset[str]:
    """The variable names (in backticks) of docs/internal-api.md's per-service table."""
    text = (ROOT / "docs" / "internal-api.md").read_text()
    section = text.split("## Settings (env) per service", 1)[1]
    names: set[str] = set()
    in_table = False
    for line in section.splitlines():
        if line.startswith("|"):
            in_table = True
            cells = line.strip().strip("|").split("|")
            if len(cells) >= 2:
                names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[1]))
        elif in_table:
            break
    return frozenset(names)


@cache
def model_names() -> frozenset[str]:
    """Every variable of the services' settings models (services/<name>/settings.py).
    A service whose settings module does not exist yet contributes nothing."""
    names: set[str] = set()
    for service in SERVICES:
        try:
            module = importlib.import_module(f"services.{service}.settings")
        except ModuleNotFoundError as exc:
            if exc.name not in {f"services.{service}", f"services.{service}.settings"}:
                raise
            continue
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, CommonSettings)
                and value.__module__ == module.__name__
            ):
                names |= settings_env_names(value)
    return frozenset(names)


def known_names() -> set[str]:
    """Every variable a service reads: the public ones, the documented per-service ones,
    and whatever the settings models add."""
    return set(common_names() | documented_service_names() | model_names())


def test_the_variable_sources_parse() -> None:
    # guards against a silently empty set when the docs or the settings change shape
    assert {"DATABASE_URL", "AMQP_URL", "PUBLIC_URL", "LOG_LEVEL", "ADMIN_PASSWORD"} <= (
        common_names()
    )
    assert {
        "IDENTITY_HOST",
        "IDENTITY_SESSION_MAX_HOURS",
        "PORTALS_PORT",
        "INVITATIONS_SWEEP_SECONDS",
        "MAILER_RETRY_BASE_SECONDS",
        "GATEWAY_API_KEY",
        "INVITATIONS_URL",
    } <= documented_service_names()
    assert len(documented_service_names()) >= 20


# ---------------------------------------------------------------------------------------
# deploy/.env.example
# ---------------------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"line {number}: {line!r}"
        assert name not in values, f"{name} is set twice"
        assert not value.startswith(("'", '"')), f"{name}: compose v1 would keep the quotes"
        assert " #" not in value, f"{name}: compose v1 would keep a trailing comment"
        values[name] = value
    return values


def test_env_example_lists_every_variable_and_nothing_else() -> None:
    names = set(env_example())
    assert not names & set(OWN_SECRETS), "per-service secrets never go in the shared file"
    missing = known_names() - names - set(OWN_SECRETS)
    assert not missing, f"deploy/.env.example lacks {sorted(missing)}"
    unknown = {n for n in names - known_names() if not n.startswith(COMPOSE_ONLY_PREFIX)}
    assert not unknown, f"deploy/.env.example sets variables nothing reads: {sorted(unknown)}"


def test_env_example_has_a_comment_for_every_variable() -> None:
    previous = ""
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            name = line.partition("=")[0]
            assert previous.startswith("#") or previous.partition("=")[0].isupper(), name
        previous = line


def test_env_example_values_fit_the_containers() -> None:
    values = env_example()
    for service, port in PORTS.items():
        assert values[f"{service.upper()}_PORT"] == str(port)
        assert values[f"{service.upper()}_HOST"] == "0.0.0.0"
        management = values[f"{service.upper()}_MANAGEMENT_PORT"]
        assert management == str(MANAGEMENT_PORTS[service])
    assert values["IDENTITY_URL"] == "http://identity:8101"
    assert values["PORTALS_URL"] == "http://portals:8102"
    assert values["INVITATIONS_URL"] == "http://invitations:8103"
    assert values["SMTP_HOST"] == "mailpit" and values["SMTP_PORT"] == "1025"
    # the server and database only: each service logs in as its own role
    assert values["DATABASE_URL"] == "postgresql://postgres:5432/clientpress"
    # the broker's address only: each service logs in as its own user
    assert values["AMQP_URL"] == "amqp://rabbitmq:5672/"
    assert values["PUBLIC_URL"] == "http://localhost:8080"
    assert values["ADMIN_EMAIL"]
    # the example must itself be a valid configuration
    settings = CommonSettings.model_validate({k.lower(): v for k, v in values.items()})
    assert settings.public_base == "http://localhost:8080"


# ---------------------------------------------------------------------------------------
# deploy/compose.yaml
# ---------------------------------------------------------------------------------------


COMPOSE_KEYS = keygen_lines(generate())


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`docker-compose config` (v1) must accept the file; returns what it resolved.
    Also `docker compose config` (v2) when that plugin is installed."""
    binary = require_binary("docker-compose", "`apt-get install docker-compose`")
    # without the secrets compose refuses to start, naming what to run
    empty = tmp_path_factory.mktemp("compose") / "empty.env"
    empty.write_text("")
    refused = run([binary, "--env-file", str(empty), "-f", str(COMPOSE_FILE), "config"])
    assert refused.returncode != 0 and "make secrets" in refused.stderr, refused.stderr
    # an interpolation env file with only what `make secrets` writes: a developer's own
    # deploy/.env must not matter here
    secrets = tmp_path_factory.mktemp("compose") / "secrets.env"
    lines = [f"{k}={v}" for k, v in COMPOSE_SECRETS.items()] + list(COMPOSE_KEYS)
    secrets.write_text("\n".join(lines) + "\n")
    base = ["--env-file", str(secrets), "-f", str(COMPOSE_FILE), "config"]
    result = run([binary, *base])
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    assert "WARN" not in result.stderr.upper(), result.stderr
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"]).returncode == 0:
        v2 = run([docker, "compose", *base])
        assert v2.returncode == 0, f"docker compose config failed:\n{v2.stderr}"
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture(scope="module")
def compose_raw() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return raw


def app_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run the clientpress image."""
    return {
        name: svc
        for name, svc in config["services"].items()
        if str(svc.get("image", "")).startswith("clientpress:")
    }


def test_compose_has_the_whole_stack(compose_config: dict[str, Any]) -> None:
    assert set(compose_config["services"]) == {*SERVICES, *ONE_SHOTS, *BACKING}
    assert set(app_services(compose_config)) == {*SERVICES, *ONE_SHOTS}
    assert compose_config["services"]["postgres"]["image"] == "postgres:16"
    assert compose_config["services"]["rabbitmq"]["image"] == "rabbitmq:3.13-management"
    assert compose_config["services"]["mailpit"]["image"].startswith("axllent/mailpit")
    assert set(compose_config["volumes"]) >= {"postgres-data", "rabbitmq-data"}


def test_compose_services_build_the_image_and_wait_for_their_dependencies(
    compose_config: dict[str, Any],
) -> None:
    for name, svc in app_services(compose_config).items():
        assert Path(svc["build"]["context"]).resolve() == ROOT, name
        assert svc["build"]["dockerfile"] == "Dockerfile", name
        assert svc["image"] == "clientpress:latest", name
        depends = svc["depends_on"]
        if name == "broker-setup":
            assert depends["rabbitmq"]["condition"] == "service_healthy"
            continue
        assert depends["postgres"]["condition"] == "service_healthy", name
        if name == "database-setup":
            continue
        if name == "migrate":
            # each schema migrated by its own role, which database-setup makes
            assert depends["database-setup"]["condition"] == "service_completed_successfully"
            continue
        assert depends["rabbitmq"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["broker-setup"]["condition"] == "service_completed_successfully", name
        assert svc["environment"]["SERVICE"] == name
        assert svc["stop_grace_period"] == "30s", name
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD" and test[-1] == "/readyz", name
    for name in ("postgres", "rabbitmq"):
        assert compose_config["services"][name]["healthcheck"]["test"], name


def test_compose_migrate_runs_every_schema(compose_raw: dict[str, Any]) -> None:
    migrate = compose_raw["services"]["migrate"]
    script = " ".join(migrate["entrypoint"])
    commands = [f"python -m services.{s} migrate" for s in SCHEMA_SERVICES]
    assert " && ".join(commands) in re.sub(r"\s+", " ", script)
    assert migrate["restart"] == "no"


def published_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["published"]))
        else:  # "8080:8080" or "127.0.0.1:8080:8080"
            ports.add(int(str(entry).split(":")[-2]))
    return ports


def test_compose_publishes_only_the_gateway_and_the_inboxes(
    compose_raw: dict[str, Any],
) -> None:
    published = {name: published_ports(svc) for name, svc in compose_raw["services"].items()}
    assert {name: ports for name, ports in published.items() if ports} == {
        "gateway": {8080},
        "mailpit": {8025},
        "rabbitmq": {15672},
    }
    # the inboxes (every link; the broker's administrator) answer this host only
    for name in ("mailpit", "rabbitmq"):
        for entry in compose_raw["services"][name]["ports"]:
            assert str(entry).startswith("127.0.0.1:"), (name, entry)


def test_compose_names_exactly_the_known_variables(compose_config: dict[str, Any]) -> None:
    known = known_names()
    for name, svc in app_services(compose_config).items():
        if name in ("broker-setup", "database-setup"):
            continue  # the provisioning's own variables (libs/common/provision.py)
        env = set(svc.get("environment", {}))
        unknown = {
            n for n in env - known - IMAGE_VARIABLES if not n.startswith(COMPOSE_ONLY_PREFIX)
        }
        assert not unknown, f"compose service {name} sets unknown variables {sorted(unknown)}"
        mine = {s for s, owners in OWN_SECRETS.items() if name in owners}
        others = set(OWN_SECRETS) - mine
        assert not env & others, f"compose service {name} gets {sorted(env & others)}"
        missing = known - env - others
        assert not missing, f"compose service {name} lacks {sorted(missing)}"
    # the raw file names no other variable either (${...} substitutions included)
    substituted = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE_FILE.read_text()))
    assert {n for n in substituted if not n.startswith(COMPOSE_ONLY_PREFIX)} <= known | set(
        COMPOSE_SECRETS
    )


def test_compose_gives_each_service_only_its_own_key(compose_config: dict[str, Any]) -> None:
    keys = dict(line.split("=", 1) for line in COMPOSE_KEYS)
    for name, svc in app_services(compose_config).items():
        env = svc["environment"]
        leaked = {n for n in env if n.startswith("CLIENTPRESS_") and n.endswith("_SERVICE_KEY")}
        assert not leaked, f"{name} sees {sorted(leaked)}"
        if name in ONE_SHOTS:
            assert not env.get("SERVICE_KEY"), f"{name} needs no key"
            continue
        assert env["SERVICE_KEY"] == keys[compose_variable(name)], name
        assert env["SERVICE_PUBLIC_KEYS"] == keys[COMPOSE_PUBLIC_VARIABLE], name
        assert set(parse_public_table(env["SERVICE_PUBLIC_KEYS"])) == set(SERVICES)


def test_compose_refuses_to_start_without_the_service_keys(tmp_path: Path) -> None:
    binary = require_binary("docker-compose", "`apt-get install docker-compose`")
    # every other secret there, only the keys missing
    secrets = tmp_path / "secrets.env"
    secrets.write_text("".join(f"{k}={v}\n" for k, v in COMPOSE_SECRETS.items()))
    result = run([binary, "--env-file", str(secrets), "-f", str(COMPOSE_FILE), "config"])
    assert result.returncode != 0
    assert "_SERVICE_KEY is not set: run make secrets" in result.stderr
    makefile = (ROOT / "Makefile").read_text()
    assert "scripts/compose_secrets.py" in makefile.split("\nsecrets:", 1)[1].split("\n\n")[0]


# ---------------------------------------------------------------------------------------
# deploy/k8s (kustomize)
# ---------------------------------------------------------------------------------------


@cache
def kustomize(directory: Path) -> tuple[dict[str, Any], ...]:
    binary = require_binary("kubectl", "the Kubernetes apt repository (kubectl)")
    result = run([binary, "kustomize", str(directory)])
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
    assert docs, f"kubectl kustomize {directory} rendered nothing"
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
    return docs


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def labels_of(doc: dict[str, Any]) -> dict[str, str]:
    return dict(doc["spec"]["template"]["metadata"].get("labels", {}))


def is_provisioning(container: dict[str, Any]) -> bool:
    """The broker provisioning (libs/common/provision.py) runs from the ClientPress image
    with the broker's own credentials; it is a tool, not a service with settings."""
    words = [*container.get("command", []), *container.get("args", [])]
    return any("libs.common.provision" in str(word) for word in words)


def is_clientpress(container: dict[str, Any]) -> bool:
    return str(container["image"]).split(":")[0].rsplit("/", 1)[-1] == "clientpress"


def workloads(docs: tuple[dict[str, Any], ...]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield doc


OVERLAYS = pytest.mark.parametrize("directory", [K8S_BASE, K8S_LOCAL], ids=["base", "local"])


@OVERLAYS
def test_k8s_has_every_service(directory: Path) -> None:
    docs = kustomize(directory)
    deployments = of_kind(docs, "Deployment")
    services = of_kind(docs, "Service")
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    pdbs = of_kind(docs, "PodDisruptionBudget")
    for name, port in PORTS.items():
        deployment = deployments[name]
        labels = labels_of(deployment)
        assert labels["app.kubernetes.io/name"] == name
        assert labels["app.kubernetes.io/part-of"] == "clientpress"
        assert deployment["metadata"]["labels"]["app.kubernetes.io/part-of"] == "clientpress"
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert is_clientpress(container)
        assert {"name": "SERVICE", "value": name} in container["env"]
        assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
            ("http", port),
            ("management", MANAGEMENT_PORTS[name]),
        ]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(MANAGEMENT_PORTS[name])
        assert annotations["prometheus.io/path"] == "/metrics"
        service = services[name]
        assert service["spec"]["selector"].items() <= labels.items()
        # The management port is behind no Service, so no Ingress can ever route it.
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(port, "http")]
        hpa = hpas[name]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        pdb = pdbs[name]
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert "replicas" not in deployment["spec"], f"{name}: the HPA owns the replica count"
    (ingress,) = of_kind(docs, "Ingress").values()
    backends = [
        path["backend"]["service"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert backends and all(b["name"] == "gateway" for b in backends)
    assert all(b["port"] in ({"name": "http"}, {"number": PORTS["gateway"]}) for b in backends)


@OVERLAYS
def test_k8s_no_ingress_or_service_reaches_a_management_port(directory: Path) -> None:
    docs = kustomize(directory)
    management = set(MANAGEMENT_PORTS.values()) | {"management"}
    for name, service in of_kind(docs, "Service").items():
        if name not in PORTS:  # RabbitMQ's own UI port is also called "management"
            continue
        for port in service["spec"]["ports"]:
            assert port["port"] not in management, service["metadata"]["name"]
            assert port.get("targetPort") not in management, service["metadata"]["name"]
    for ingress in of_kind(docs, "Ingress").values():
        backends = [
            path["backend"]["service"]["port"]
            for rule in ingress["spec"].get("rules", [])
            for path in rule["http"]["paths"]
        ]
        if "defaultBackend" in ingress["spec"]:
            backends.append(ingress["spec"]["defaultBackend"]["service"]["port"])
        for port in backends:
            assert port.get("name") not in management and port.get("number") not in management


def test_k8s_monitoring_component_scrapes_the_management_port(tmp_path: Path) -> None:
    overlay = tmp_path / "with-monitoring"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S_LOCAL, overlay)],
                "components": [os.path.relpath(K8S_MONITORING, overlay)],
            }
        )
    )
    (monitor,) = of_kind(kustomize(overlay), "PodMonitor").values()
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "management", "path": "/metrics", "interval": "30s"}
    ]
    selector = monitor["spec"]["selector"]["matchLabels"]
    for deployment in of_kind(kustomize(K8S_LOCAL), "Deployment").values():
        if deployment["metadata"]["name"] in PORTS:
            assert selector.items() <= labels_of(deployment).items()


@OVERLAYS
def test_k8s_workloads_are_probed_bounded_and_locked_down(directory: Path) -> None:
    docs = kustomize(directory)
    for doc in workloads(docs):
        pod = doc["spec"]["template"]["spec"]
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        pod_security = pod.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, where
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where} {bound}"
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            if container in pod["containers"] and doc["kind"] != "Job":
                assert "livenessProbe" in container and "readinessProbe" in container, where
            if doc["kind"] == "Deployment":
                assert security.get("readOnlyRootFilesystem") is True, where
            if not is_clientpress(container):
                continue
            # the ClientPress image: uid 10001, read-only root, /tmp on an emptyDir
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("runAsNonRoot") is True, where
            uid = security.get("runAsUser", pod_security.get("runAsUser"))
            assert uid == 10001, where
            assert pod.get("enableServiceLinks") is False, f"{where}: *_PORT would clash"
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], where
            if doc["kind"] == "Deployment" and container in pod["containers"]:
                assert pod["terminationGracePeriodSeconds"] == 30, where
                probes = ("startupProbe", "livenessProbe", "readinessProbe")
                paths = [container[p]["httpGet"]["path"] for p in probes]
                assert paths == ["/healthz", "/healthz", "/readyz"], where
                assert {container[p]["httpGet"]["port"] for p in probes} == {"management"}


@OVERLAYS
def test_k8s_migrates_before_serving_and_nothing_blocks_the_next_apply(directory: Path) -> None:
    docs = kustomize(directory)
    # A Job's pod template is immutable: one with a fixed name makes the next
    # `kubectl apply` of a new image fail (and GitOps tools stall). There is none.
    assert not of_kind(docs, "Job") and not of_kind(docs, "CronJob") and not of_kind(docs, "Pod")
    deployments = of_kind(docs, "Deployment")
    for service in SCHEMA_SERVICES:
        pod = deployments[service]["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        (container,) = pod["containers"]
        assert init["command"] == ["python", "-m", f"services.{service}", "migrate"], service
        assert init["image"] == container["image"], "the migrations of the image that serves"
        database = next(v for v in init["env"] if v["name"] == "DATABASE_URL")
        assert database["valueFrom"]["secretKeyRef"]["name"].startswith("clientpress-secrets")
        assert init["envFrom"] == container["envFrom"]


def pod_names(peer: dict[str, Any]) -> set[str]:
    """The ClientPress services a NetworkPolicy peer selects by name (empty: none)."""
    labels = peer.get("podSelector", {}).get("matchLabels", {})
    name = labels.get("app.kubernetes.io/name")
    return {name} if name in PORTS else set()


def policies_for(policies: list[dict[str, Any]], service: str, kind: str) -> list[dict[str, Any]]:
    """The ingress or egress rules of every policy that selects ``service``'s pods."""
    rules = []
    for policy in policies:
        spec = policy["spec"]
        if kind.capitalize() not in spec.get("policyTypes", []):
            continue
        selector = spec["podSelector"]
        labels = selector.get("matchLabels", {})
        matches = labels.get("app.kubernetes.io/name") == service or any(
            e["key"] == "app.kubernetes.io/component" and "service" in e["values"]
            for e in selector.get("matchExpressions", [])
        )
        if matches:
            rules.extend(spec.get(kind, []))
    return rules


@OVERLAYS
def test_k8s_network_policies(directory: Path) -> None:
    """Ingress and egress allow exactly the arrows of the README's architecture table;
    the monitoring namespace reaches only the management port (/metrics)."""
    policies = list(of_kind(kustomize(directory), "NetworkPolicy").values())
    default_deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] in ({}, None)
        and p["spec"].get("policyTypes") == ["Ingress"]
        and not p["spec"].get("ingress")
    ]
    assert default_deny, "no default-deny ingress policy"

    gateway_rules = policies_for(policies, "gateway", "ingress")
    assert any(
        "from" not in r and {"protocol": "TCP", "port": 8080} in r["ports"] for r in gateway_rules
    )
    for service in ("identity", "portals", "invitations", "mailer"):
        rules = policies_for(policies, service, "ingress")
        assert rules, f"{service}: no ingress rule (default deny would cut it off)"
        callers: set[str] = set()
        for rule in rules:
            assert rule.get("from"), f"{service} accepts connections from anywhere"
            ports = [p["port"] for p in rule["ports"]]
            for peer in rule["from"]:
                namespaces = peer.get("namespaceSelector")
                if namespaces is not None:
                    assert namespaces == {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }, peer
                    assert "podSelector" not in peer, peer
                    assert ports == [METRICS_PORTS[service]], f"{service}: monitoring {ports}"
                    continue
                names = pod_names(peer)
                assert names, f"{service}: a peer that is not one named service: {peer}"
                assert ports == [PORTS[service]], service
                callers |= names
        expected = {caller for caller, callees in CALLS.items() if service in callees}
        assert callers == expected, f"{service} answers {sorted(callers)}"

    for service in SERVICES:
        egress = policies_for(policies, service, "egress")
        assert egress, f"{service}: egress is not limited"
        reached = {
            name for rule in egress for peer in rule.get("to", []) for name in pod_names(peer)
        }
        assert reached == CALLS[service], f"{service} reaches {sorted(reached)}"
        open_ports = {p["port"] for rule in egress if "to" not in rule for p in rule["ports"]}
        smtp = {25, 465, 587}
        assert {53, 5432, 5672} <= open_ports, service
        assert (open_ports & smtp == smtp) == (service == "mailer"), service
        assert not open_ports & set(PORTS.values()), f"{service} reaches a service port"


def k8s_names(docs: tuple[dict[str, Any], ...]) -> tuple[set[str], set[str], set[str]]:
    """(ConfigMap keys, Secret keys, names set directly on containers) of ClientPress."""
    config_keys: set[str] = set()
    secret_keys: set[str] = set()
    container_names: set[str] = set()
    for name, config_map in of_kind(docs, "ConfigMap").items():
        if name.startswith("clientpress-config"):
            config_keys |= set(config_map.get("data", {}))
    for name, secret in of_kind(docs, "Secret").items():
        if name.startswith("clientpress-secrets"):
            secret_keys |= set(secret.get("data", {})) | set(secret.get("stringData", {}))
    for doc in workloads(docs):
        pod = doc["spec"]["template"]["spec"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            if not is_clientpress(container) or is_provisioning(container):
                continue
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                assert ref["name"].startswith(("clientpress-config", "clientpress-secrets"))
            for var in container.get("env", []):
                container_names.add(var["name"])
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == SERVICE_KEYS_SECRET:
                    assert var["name"] in {"SERVICE_KEY", "SERVICE_PUBLIC_KEYS"}, var
                elif ref:
                    assert ref["name"].startswith("clientpress-secrets"), var
                    assert ref["key"] == var["name"], var
    return config_keys, secret_keys, container_names


def secret_example_keys() -> set[str]:
    example = yaml.safe_load((K8S_BASE / "secret.example.yaml").read_text())
    assert example["kind"] == "Secret" and example["metadata"]["name"] == "clientpress-secrets"
    return set(example["stringData"])


@OVERLAYS
def test_k8s_gives_each_service_only_its_own_key(directory: Path) -> None:
    docs = kustomize(directory)
    example = yaml.safe_load((K8S_BASE / "service-keys.example.yaml").read_text())
    assert example["kind"] == "Secret" and example["metadata"]["name"] == SERVICE_KEYS_SECRET
    assert set(example["stringData"]) == {line.split("=", 1)[0] for line in COMPOSE_KEYS}
    for doc in workloads(docs):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if not is_clientpress(container):
                continue
            refs = {
                var["name"]: var["valueFrom"]["secretKeyRef"]
                for var in container.get("env", [])
                if var.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
                == SERVICE_KEYS_SECRET
            }
            name = doc["metadata"]["name"]
            if doc["kind"] == "Job":
                assert not refs, "the migrations need no key"
                continue
            assert refs["SERVICE_KEY"]["key"] == compose_variable(name), name
            assert refs["SERVICE_PUBLIC_KEYS"]["key"] == COMPOSE_PUBLIC_VARIABLE, name


def test_k8s_secret_example_is_not_in_the_base() -> None:
    kustomization = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization.get("resources", [])
    assert "service-keys.example.yaml" not in kustomization.get("resources", [])
    assert secret_example_keys() == SECRET_NAMES
    assert not of_kind(kustomize(K8S_BASE), "Secret"), "the base ships no Secret"
    assert any(i["name"] == "clientpress" for i in kustomization["images"])


@OVERLAYS
def test_k8s_names_exactly_the_known_variables(directory: Path) -> None:
    docs = kustomize(directory)
    config_keys, secret_keys, container_names = k8s_names(docs)
    secret_keys |= secret_example_keys()
    assert not config_keys & SECRET_NAMES, "a secret is in the ConfigMap"
    assert secret_keys == SECRET_NAMES
    named = config_keys | secret_keys | container_names
    known = known_names()
    missing = known - named
    assert not missing, f"{directory.name}: the k8s config lacks {sorted(missing)}"
    unknown = named - known - IMAGE_VARIABLES
    assert not unknown, f"{directory.name}: unknown variables {sorted(unknown)}"
    config_map = next(
        c for n, c in of_kind(docs, "ConfigMap").items() if n.startswith("clientpress")
    )
    data = config_map["data"]
    for service, port in PORTS.items():
        if service != "gateway":
            assert data[f"{service.upper()}_PORT"] == str(port)
        assert data[f"{service.upper()}_HOST"] == "0.0.0.0"
        assert data[f"{service.upper()}_MANAGEMENT_PORT"] == str(MANAGEMENT_PORTS[service])
    assert data["GATEWAY_PORT"] == "8080"
    for service in ("identity", "portals", "invitations"):
        assert data[f"{service.upper()}_URL"] == f"http://{service}:{PORTS[service]}"


@OVERLAYS
def test_k8s_each_service_gets_only_its_own_secrets(directory: Path) -> None:
    for name, deployment in of_kind(kustomize(directory), "Deployment").items():
        if name not in PORTS:
            continue
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"] for e in container.get("env", [])}
        mine = {s for s, owners in OWN_SECRETS.items() if name in owners}
        assert mine - {"ADMIN_PASSWORD", "GATEWAY_API_KEY"} <= env, name
        assert not env & (set(OWN_SECRETS) - mine), (name, env & (set(OWN_SECRETS) - mine))
        assert not container.get("envFrom", []) or all(
            "secretRef" not in source for source in container["envFrom"]
        ), name


def _rabbitmq_conf(text: str) -> dict[str, str]:
    return {
        key.strip(): value.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
        for key, _, value in [line.partition("=")]
    }


def test_the_brokers_refuse_messages_over_the_size_limit(compose_raw: dict[str, Any]) -> None:
    """RabbitMQ 3.13 takes a message of up to 128 MiB by default: an integration's 100 MB
    invitation.requested was queued, and read whole by the invitations service. Compose
    and the local Kubernetes broker load max_message_size from the same conf.d file."""
    limit = str(broker.MAX_MESSAGE_BYTES)
    conf = DEPLOY / "rabbitmq" / "30-clientpress-limits.conf"
    assert _rabbitmq_conf(conf.read_text()) == {"max_message_size": limit}
    mounts = compose_raw["services"]["rabbitmq"]["volumes"]
    assert f"./rabbitmq/{conf.name}:/etc/rabbitmq/conf.d/{conf.name}:ro" in mounts
    docs = kustomize(K8S_LOCAL)
    config = of_kind(docs, "ConfigMap")
    loaded = next(c["data"][conf.name] for c in config.values() if conf.name in c.get("data", {}))
    assert _rabbitmq_conf(loaded) == {"max_message_size": limit}
    (container,) = of_kind(docs, "StatefulSet")["rabbitmq"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert f"/etc/rabbitmq/conf.d/{conf.name}" in {
        m["mountPath"] for m in container["volumeMounts"]
    }


def test_k8s_local_overlay_is_complete() -> None:
    docs = kustomize(K8S_LOCAL)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for backing in ("postgres", "rabbitmq", "mailpit"):
        assert ("Service", backing) in names
    assert ("StatefulSet", "postgres") in names and ("StatefulSet", "rabbitmq") in names
    assert ("Deployment", "mailpit") in names
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"clientpress"}
    _, secret_keys, _ = k8s_names(docs)
    assert {"DATABASE_URL", "AMQP_URL"} <= secret_keys
    data = next(c for n, c in of_kind(docs, "ConfigMap").items() if n.startswith("clientpress"))
    assert data["data"]["PUBLIC_URL"] == "http://localhost:8080"
    assert data["data"]["SMTP_HOST"] == "mailpit"
    base_config = next(
        c
        for n, c in of_kind(kustomize(K8S_BASE), "ConfigMap").items()
        if n.startswith("clientpress")
    )
    assert base_config["data"]["PUBLIC_URL"] != "http://localhost:8080"
    rabbit = of_kind(docs, "StatefulSet")["rabbitmq"]
    (container,) = rabbit["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "rabbitmq:3.13-management"
    # Every service reaches AMQP, the gateway included (its cache listens for changes).
    policy = of_kind(docs, "NetworkPolicy")["rabbitmq"]
    allowed = {
        value
        for rule in policy["spec"]["ingress"]
        if any(p["port"] == 5672 for p in rule.get("ports", []))
        for peer in rule.get("from", [])
        for expr in peer["podSelector"].get("matchExpressions", [])
        if expr["key"] == "app.kubernetes.io/component"
        for value in expr["values"]
    }
    deployments = of_kind(docs, "Deployment")
    for name in ("identity", "portals", "invitations", "mailer", "gateway"):
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] in allowed, name


def test_k8s_local_inboxes_answer_a_port_forward_only() -> None:
    """Mailpit's web inbox holds every link the stack mails (an Accept Invitation link is
    an account), RabbitMQ's management UI the broker's administrator login: compose
    publishes both on 127.0.0.1 only. In the local overlay any pod of any namespace could
    reach both. ``kubectl port-forward`` connects inside the pod, where no NetworkPolicy
    applies, so a developer still reaches them; nothing else does."""
    policies = of_kind(kustomize(K8S_LOCAL), "NetworkPolicy")
    for name, port in (("mailpit", 8025), ("rabbitmq", 15672)):
        open_to = [
            rule.get("from", "anyone")
            for rule in policies[name]["spec"]["ingress"]
            if any(p["port"] == port for p in rule.get("ports", [{"port": port}]))
        ]
        assert open_to == [], (name, port, open_to)


def test_k8s_gateway_trusts_only_the_ingress_controller() -> None:
    """The base trusts no proxy (an overlay names its controller's range); the local one
    trusts the laptop clusters' pod networks; the Ingress limits each address first."""
    for directory, expected in ((K8S_BASE, ""), (K8S_LOCAL, "10.0.0.0/8")):
        docs = kustomize(directory)
        data = next(
            c for n, c in of_kind(docs, "ConfigMap").items() if n.startswith("clientpress")
        )["data"]
        assert data["GATEWAY_TRUSTED_PROXIES"] == expected, directory.name
        parse_networks(data["GATEWAY_TRUSTED_PROXIES"])
        assert data["GATEWAY_FORWARDED_HEADER"] == "x-forwarded-for"
        annotations = of_kind(docs, "Ingress")["gateway"]["metadata"]["annotations"]
        assert int(annotations["nginx.ingress.kubernetes.io/limit-rps"]) > 1
        assert int(annotations["nginx.ingress.kubernetes.io/limit-connections"]) > 1


# ---------------------------------------------------------------------------------------
# the image: Dockerfile, entrypoint, healthcheck, build context, package data
# ---------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return instructions


def test_dockerfile_is_multi_stage_non_root_and_healthchecked() -> None:
    instructions = dockerfile_instructions()
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "builder + runtime stages"
    args = dict(a.split("=", 1) for keyword, a in instructions if keyword == "ARG" and "=" in a)
    final_image = froms[-1].split()[0]
    final_image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], final_image)
    assert final_image.startswith("python:3.11-slim")
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    runs = " ".join(a for k, a in instructions if k == "RUN")
    # The locked tree, every file checked against its hash; then the project, nothing more.
    assert "pip install --require-hashes -r requirements.lock" in runs
    assert "pip install --no-deps --no-build-isolation ." in runs
    assert any(k == "COPY" and a.startswith("--from=") for k, a in final), "copies the venv"
    final_runs = " ".join(a for k, a in final if k == "RUN")
    assert not re.search(r"apt-get install|build-essential|gcc", final_runs)
    users = [a for k, a in final if k == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user == "10001" or "10001" in final_runs
    healthchecks = [a for k, a in final if k == "HEALTHCHECK"]
    assert healthchecks and "/healthz" in healthchecks[-1]
    assert "curl" not in healthchecks[-1]
    entrypoints = [a for k, a in final if k == "ENTRYPOINT"]
    assert entrypoints and entrypoints[-1] == '["/app/deploy/docker-entrypoint.sh"]'


def test_entrypoint_script_runs_the_chosen_service(tmp_path: Path) -> None:
    assert ENTRYPOINT.is_file()
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR, "docker-entrypoint.sh is not executable"
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert 'python -m "services.${SERVICE' in text
    assert run(["sh", "-n", str(ENTRYPOINT)]).returncode == 0
    # a stand-in `python` that prints what it was asked to run
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "python $*"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    ok = subprocess.run(
        [str(ENTRYPOINT), "migrate"],
        env={**env, "SERVICE": "identity"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "python -m services.identity migrate"
    for bad in ({}, {"SERVICE": "nope"}):
        refused = subprocess.run(
            [str(ENTRYPOINT)], env={**env, **bad}, capture_output=True, text=True, check=False
        )
        assert refused.returncode != 0
        assert "identity|portals|invitations|mailer|gateway" in refused.stderr
        assert not refused.stdout


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_healthcheck_script_asks_the_management_port() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = str(server.server_address[1])

        def check(path: str, **env: str) -> int:
            return subprocess.run(
                [sys.executable, str(HEALTHCHECK), path],
                env={"PATH": os.environ.get("PATH", ""), **env},
                capture_output=True,
                check=False,
                timeout=30,
            ).returncode

        closed = str(free_port())
        mailer = {"SERVICE": "mailer", "MAILER_HOST": "0.0.0.0"}
        assert check("/healthz", **mailer, MAILER_MANAGEMENT_PORT=port) == 0
        assert check("/readyz", **mailer, MAILER_MANAGEMENT_PORT=port) == 1
        # the generic name, for a container that runs one service; the specific one wins
        assert check("/healthz", SERVICE="gateway", MANAGEMENT_PORT=port) == 0
        assert (
            check(
                "/healthz", SERVICE="gateway", MANAGEMENT_PORT=closed, GATEWAY_MANAGEMENT_PORT=port
            )
            == 0
        )
        # the public port serves no health route: it is never asked
        assert check("/healthz", SERVICE="gateway", GATEWAY_PORT=port, MANAGEMENT_PORT=closed) == 1
        assert check("/healthz", SERVICE="nope") == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_dockerignore_keeps_what_the_build_needs() -> None:
    lines = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert "*" in lines  # allow-list style: nothing enters the context by accident
    for needed in ("pyproject.toml", "libs/", "services/", "deploy/docker-entrypoint.sh"):
        assert f"!{needed}" in lines, needed
    assert "!deploy/healthcheck.py" in lines
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY" and not args.startswith("--from="):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert f"!{source.rstrip('/')}/" in lines or f"!{source}" in lines, source


def test_package_data_ships_every_non_python_file() -> None:
    """The image runs the installed wheel: a file type setuptools does not package (e.g. a
    font in services/gateway/static) would be missing in the container."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["*"]
    missing = []
    for top in ("services", "libs"):
        for path in (ROOT / top).rglob("*"):
            relative = path.relative_to(ROOT)
            if (
                path.is_dir()
                or "__pycache__" in relative.parts
                or any(part.startswith(".") for part in relative.parts)
                or path.suffix in {".py", ".pyc", ".pyi"}
            ):
                continue
            if not any(fnmatch.fnmatch(path.name, p) for p in patterns):
                missing.append(str(relative))
    assert not missing, f"not in [tool.setuptools.package-data], so not in the image: {missing}"


# ---------------------------------------------------------------------------------------
# what an operator meets on the first real install
# ---------------------------------------------------------------------------------------

MONITORING_NAMESPACE = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
OTLP_HTTP_PORT = 4318


@OVERLAYS
def test_k8s_services_reach_the_trace_collector(directory: Path) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT (config.env's example: a collector in the `monitoring`
    namespace, OTLP/HTTP on 4318): the egress policies must not cut every span off."""
    docs = kustomize(directory)
    example = (K8S_BASE / "config.env").read_text()
    assert f".monitoring:{OTLP_HTTP_PORT}" in example
    policies = list(of_kind(docs, "NetworkPolicy").values())
    for service in SERVICES:
        allowed = [
            rule
            for rule in policies_for(policies, service, "egress")
            if {"protocol": "TCP", "port": OTLP_HTTP_PORT} in rule.get("ports", [])
            and any(
                peer.get("namespaceSelector") == MONITORING_NAMESPACE and "podSelector" not in peer
                for peer in rule.get("to", [])
            )
        ]
        assert allowed, f"{service}: no egress to the trace collector (monitoring:4318)"


def documented_production_secret_keys(markdown: str) -> set[str]:
    """The keys of `clientpress-secrets` that the Kubernetes "Production:" list names,
    `<SERVICE>_…` expanded to the five services."""
    section = markdown.split("### Kubernetes (kustomize)", 1)[1].split("\n### ", 1)[0]
    bullet = section.split("- provides the Secret `clientpress-secrets` with", 1)[1]
    bullet = bullet.split("\n- ", 1)[0]
    keys: set[str] = set()
    for name in re.findall(r"`([A-Z<][A-Z0-9_<>]*)`", bullet):
        if name.startswith("<SERVICE>_"):
            keys |= {name.replace("<SERVICE>", s.upper()) for s in SERVICES}
        else:
            keys.add(name)
    return keys


def test_docs_name_every_key_of_the_kubernetes_secret() -> None:
    """An overlay written from the docs' list must start: every key the base mounts
    without `optional: true` is required, or the pods never leave
    CreateContainerConfigError."""
    required: set[str] = set()
    for doc in workloads(kustomize(K8S_BASE)):
        pod = doc["spec"]["template"]["spec"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == "clientpress-secrets" and not ref.get("optional"):
                    required.add(ref["key"])
    assert {"DATABASE_URL", "AMQP_URL", "MAIL_JOB_KEY"} <= required
    documented = documented_production_secret_keys(DEPLOYING.read_text())
    assert not required - documented, f"docs/deploying.md omits {sorted(required - documented)}"
    assert documented == SECRET_NAMES, f"docs/deploying.md: {sorted(documented ^ SECRET_NAMES)}"
    readme_sends_there()


def readme_sends_there() -> None:
    """The README's Kubernetes section is a summary: the steps are docs/deploying.md's."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Kubernetes (kustomize)", 1)[1].split("\n### ", 1)[0]
    assert "(docs/deploying.md#kubernetes-kustomize)" in section


def third_party_images() -> dict[str, str]:
    """Every image compose and the local Kubernetes overlay run that is not ClientPress's."""
    images = {
        f"compose {name}": str(svc["image"])
        for name, svc in yaml.safe_load(COMPOSE_FILE.read_text())["services"].items()
        if "image" in svc and not str(svc["image"]).startswith("clientpress:")
    }
    for doc in workloads(kustomize(K8S_LOCAL)):
        pod = doc["spec"]["template"]["spec"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            if not is_clientpress(container):
                images[f"k8s {doc['metadata']['name']}/{container['name']}"] = container["image"]
    return images


def test_backing_images_name_a_version() -> None:
    """An image without a tag is `latest`: each `up` or node may pull another release."""
    images = third_party_images()
    assert {"compose postgres", "compose rabbitmq", "compose mailpit"} <= set(images)
    assert "k8s mailpit/mailpit" in images
    for where, image in images.items():
        name = image.split("@", 1)[0]
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{where}: {image} names no version"
    assert images["compose mailpit"] == images["k8s mailpit/mailpit"]


def test_dockerfile_base_names_its_debian_release() -> None:
    """`python:3.11-slim` moves to the next Debian release under the same name (bookworm
    to trixie): a rebuild of the same commit would ship another OS and C library."""
    args = dict(
        a.split("=", 1) for keyword, a in dockerfile_instructions() if keyword == "ARG" and "=" in a
    )
    assert re.fullmatch(
        r"python:3\.11(\.\d+)?-slim-[a-z]+(@sha256:[0-9a-f]{64})?", args["PYTHON_IMAGE"]
    )


def test_compose_hands_the_smtp_password_to_the_mailer_alone(tmp_path: Path) -> None:
    """SMTP_PASSWORD is the relay's login: it goes in deploy/.env like the other secrets,
    and only the mailer gets it; without one (Mailpit) compose starts all the same."""
    binary = require_binary("docker-compose", "`apt-get install docker-compose`")
    assert "SMTP_PASSWORD" not in env_example()
    base = [f"{k}={v}" for k, v in COMPOSE_SECRETS.items()] + list(COMPOSE_KEYS)
    for extra, expected in (([], ""), (["SMTP_PASSWORD=relay-secret"], "relay-secret")):
        secrets = tmp_path / "secrets.env"
        secrets.write_text("\n".join(base + extra) + "\n")
        result = run([binary, "--env-file", str(secrets), "-f", str(COMPOSE_FILE), "config"])
        assert result.returncode == 0, result.stderr
        services = yaml.safe_load(result.stdout)["services"]
        assert (services["mailer"]["environment"].get("SMTP_PASSWORD") or "") == expected
        holders = {
            name
            for name, svc in services.items()
            if "SMTP_PASSWORD" in (svc.get("environment") or {})
        }
        assert holders == {"mailer"}, holders


def nginx_size(value: str) -> int:
    """An nginx size (`client_max_body_size`): bytes, or k/m/g (powers of 1024)."""
    match = re.fullmatch(r"(\d+)([kmgKMG]?)", value.strip())
    assert match, value
    return int(match[1]) * 1024 ** " kmg".index(match[2].lower() or " ")


def test_k8s_ingress_lets_the_largest_bodies_reach_the_gateway() -> None:
    """ingress-nginx refuses a body over 1 MiB by default (its own 413 page): a batch of
    invitations (16 MiB) or a logo upload never reached the gateway, which answers a too
    large one in its own words."""
    from services.gateway.domain import LOGO_FORM_LIMIT, PORTAL_BODY_LIMIT
    from services.gateway.views.api import BATCH_BODY_LIMIT

    largest = max(BATCH_BODY_LIMIT, LOGO_FORM_LIMIT, PORTAL_BODY_LIMIT)
    for directory in (K8S_BASE, K8S_LOCAL):
        ingress = of_kind(kustomize(directory), "Ingress")["gateway"]
        annotations = ingress["metadata"].get("annotations", {})
        size = annotations.get("nginx.ingress.kubernetes.io/proxy-body-size", "1m")
        assert nginx_size(size) >= largest, f"{directory.name}: proxy-body-size {size}"


def test_k8s_local_secrets_hold_only_what_a_pod_reads() -> None:
    """A key no pod mounts is a credential kept for nothing (and a sign of a step that no
    longer exists); a comment naming a manifest must name one that exists."""
    docs = kustomize(K8S_LOCAL)
    read: dict[str, set[str]] = {}
    whole: set[str] = set()
    for doc in workloads(docs):
        pod = doc["spec"]["template"]["spec"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    read.setdefault(ref["name"], set()).add(ref["key"])
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    whole.add(source["secretRef"]["name"])
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                whole.add(volume["secret"]["secretName"])
    for name, secret in of_kind(docs, "Secret").items():
        if name in whole:
            continue
        unused = set(secret.get("data", {})) - read.get(name, set())
        assert not unused, f"Secret {name}: no pod reads {sorted(unused)}"
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        for mentioned in re.findall(r"#.*?\b([a-z][a-z0-9.-]*\.yaml)\b", path.read_text()):
            assert list((DEPLOY / "k8s").rglob(mentioned)), f"{path.name} names {mentioned}"


def test_compose_writes_down_no_database_password(compose_config: dict[str, Any]) -> None:
    """PostgreSQL's administrator login was `clientpress`/`clientpress` in compose.yaml,
    the same on every installation, read by anyone with the repository: it is now
    POSTGRES_ADMIN_PASSWORD, which `make secrets` makes."""
    password = COMPOSE_SECRETS["POSTGRES_ADMIN_PASSWORD"]
    env = compose_config["services"]["postgres"]["environment"]
    assert env["POSTGRES_PASSWORD"] == password
    setup_url = compose_config["services"]["database-setup"]["environment"]["DATABASE_URL"]
    assert f"//{env['POSTGRES_USER']}:{password}@" in setup_url
    raw = COMPOSE_FILE.read_text()
    assert "clientpress:clientpress@" not in raw and "POSTGRES_PASSWORD: clientpress" not in raw


def test_make_secrets_keeps_the_database_password_of_an_existing_installation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new installation gets a fresh PostgreSQL administrator password; one made before
    it was a secret (a deploy/.env without it) keeps `clientpress`, which its data volume
    was made with (PostgreSQL reads POSTGRES_PASSWORD only into an empty volume), and is
    told how to change it."""
    from scripts import compose_secrets

    fresh = tmp_path / "fresh.env"
    monkeypatch.setattr(compose_secrets, "ENV_FILE", fresh)
    assert compose_secrets.main() == 0
    made = dict(line.split("=", 1) for line in fresh.read_text().splitlines() if "=" in line)
    assert len(made["POSTGRES_ADMIN_PASSWORD"]) >= 32
    assert made["POSTGRES_ADMIN_PASSWORD"] != "clientpress"
    assert "POSTGRES_ADMIN_PASSWORD" not in capsys.readouterr().err

    earlier = tmp_path / "earlier.env"
    earlier.write_text("# compose secrets (git-ignored)\nBROKER_ADMIN_PASSWORD=kept\n")
    monkeypatch.setattr(compose_secrets, "ENV_FILE", earlier)
    assert compose_secrets.main() == 0
    kept = dict(line.split("=", 1) for line in earlier.read_text().splitlines() if "=" in line)
    assert kept["POSTGRES_ADMIN_PASSWORD"] == "clientpress"
    assert kept["BROKER_ADMIN_PASSWORD"] == "kept"
    assert "docs/deploying.md" in capsys.readouterr().err
    for path in (ROOT / "docs" / "deploying.md", ROOT / "README.md"):
        assert "PostgreSQL's administrator password" in path.read_text(), path.name


def test_compose_runs_the_image_locked_down_as_kubernetes_does(
    compose_config: dict[str, Any],
) -> None:
    """The Kubernetes pods run read-only, with no capability and no privilege escalation;
    compose ran the same image with Docker's defaults (a writable root filesystem, Docker's
    default capabilities, setuid binaries honoured)."""
    for name, svc in app_services(compose_config).items():
        assert svc.get("read_only") is True, f"{name}: writable root filesystem"
        assert svc.get("cap_drop") == ["ALL"], f"{name}: capabilities {svc.get('cap_drop')}"
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        tmpfs = svc.get("tmpfs", [])
        tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs
        assert any(t.split(":", 1)[0] == "/tmp" for t in tmpfs), f"{name}: no /tmp"


@OVERLAYS
def test_k8s_replicas_spread_over_nodes(directory: Path) -> None:
    """Two replicas and a disruption budget protect nothing when the scheduler puts both
    on one node: a node lost takes the service down. Each Deployment asks to spread its
    pods over nodes (ScheduleAnyway, so a one-node laptop cluster still runs them)."""
    deployments = of_kind(kustomize(directory), "Deployment")
    for service in SERVICES:
        deployment = deployments[service]
        pod = deployment["spec"]["template"]["spec"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        spreads = [
            c
            for c in pod.get("topologySpreadConstraints", [])
            if c["topologyKey"] == "kubernetes.io/hostname"
        ]
        assert spreads, f"{service}: replicas may share one node"
        (spread,) = spreads
        assert spread["maxSkew"] == 1, service
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway", service
        assert spread["labelSelector"]["matchLabels"] == selector, service


def test_docs_production_steps_make_the_broker_users_and_database_roles() -> None:
    """The base mounts each service's own broker and database password, but no manifest
    makes those users and roles (that takes the administrators' credentials, which no pod
    of the base gets): the production steps must say to run the provisioning, or the
    services are refused by the broker and PostgreSQL."""
    section = DEPLOYING.read_text().split("### Kubernetes (kustomize)", 1)[1]
    section = section.split("\n### ", 1)[0]
    steps = section.split("Production: write your own overlay", 1)[1]
    steps = " ".join(steps.split("What the base gives every service", 1)[0].split())
    for command in ("libs.common.provision database", "libs.common.provision provision"):
        assert command in steps, f"docs/deploying.md: the production steps never run {command}"
    readme_sends_there()


@OVERLAYS
def test_k8s_network_policies_select_pods_that_exist(directory: Path) -> None:
    """A selector value no pod carries is a rule for something gone (the migrations Job
    became init containers): it misleads whoever audits who may talk to whom."""
    docs = kustomize(directory)
    components = {labels_of(doc).get("app.kubernetes.io/component") for doc in workloads(docs)}
    for name, policy in of_kind(docs, "NetworkPolicy").items():
        selectors = [policy["spec"]["podSelector"]]
        for kind in ("ingress", "egress"):
            for rule in policy["spec"].get(kind, []):
                for peer in [*rule.get("from", []), *rule.get("to", [])]:
                    if "podSelector" in peer:
                        selectors.append(peer["podSelector"])
        for selector in selectors:
            for expression in selector.get("matchExpressions", []):
                if expression["key"] == "app.kubernetes.io/component":
                    stale = set(expression["values"]) - components
                    assert not stale, f"{directory.name} {name}: no pod is {sorted(stale)}"


def test_k8s_ingress_waits_as_long_as_the_gateway_does() -> None:
    """ingress-nginx gives up on an answer after 60 s by default, but the gateway waits up
    to BATCH_TIMEOUT (120 s) for a batch of invitations: a large batch got the
    controller's 504 while the gateway went on making the invitations."""
    from services.gateway.upstream import BATCH_TIMEOUT

    for directory in (K8S_BASE, K8S_LOCAL):
        ingress = of_kind(kustomize(directory), "Ingress")["gateway"]
        annotations = ingress["metadata"].get("annotations", {})
        read = int(annotations.get("nginx.ingress.kubernetes.io/proxy-read-timeout", "60"))
        assert read > BATCH_TIMEOUT, f"{directory.name}: proxy-read-timeout {read}"


def test_the_image_build_fetches_nothing_unchecked(tmp_path: Path) -> None:
    """Every file the image build installs is checked against a hash: `pip install .` with
    build isolation fetched the newest `setuptools>=68` (pyproject's [build-system]) from
    the index, unpinned and unchecked, into every build."""
    runs = [a for k, a in dockerfile_instructions() if k == "RUN"]
    installs = [
        command.strip()
        for run_args in runs
        for command in re.split(r"&&|;", run_args)
        if re.search(r"\bpip install\b", command)
    ]
    assert installs
    for command in installs:
        checked = "--require-hashes" in command
        from_source = "--no-deps" in command and "--no-build-isolation" in command
        assert checked or from_source, f"unchecked: {command}"
    # the build backend comes from the dev lock's entry, hashes and all
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    backends = {
        re.split(r"[<>=!~ ]", r, maxsplit=1)[0] for r in pyproject["build-system"]["requires"]
    }
    (program,) = re.findall(r"awk '([^']*)' requirements-dev\.lock", " ".join(runs))
    result = run(["awk", program, str(ROOT / "requirements-dev.lock")])
    assert result.returncode == 0, result.stderr
    names = {line.split("==")[0] for line in result.stdout.splitlines() if "==" in line}
    assert names == backends, result.stdout
    assert "--hash=sha256:" in result.stdout and not result.stdout.rstrip().endswith("\\")


def test_compose_gateway_waits_for_the_services_it_calls(compose_config: dict[str, Any]) -> None:
    """The gateway took traffic as soon as identity's container had started, before
    identity answered (its /readyz), so the first requests met an upstream that was not
    there; and it never waited for the mailer, whose branding every page shows."""
    services = compose_config["services"]
    depends = services["gateway"]["depends_on"]
    for callee in sorted(CALLS["gateway"]):
        assert callee in depends, f"gateway does not wait for {callee}"
        assert depends[callee]["condition"] == "service_healthy", callee
        assert services[callee]["healthcheck"]["test"][-1] == "/readyz", callee
