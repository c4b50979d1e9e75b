"""Fuzz a running stack's HTTP APIs against their own OpenAPI documents with Schemathesis
(README "Fuzzing the APIs"). Not part of `make test`: it changes whatever the credentials
may change (portals, keys, passwords), so point it at a throwaway stack only.

    python scripts/fuzz_api.py --gateway http://localhost:8080 --api-key "$GATEWAY_API_KEY" \\
        [--admin-email admin@example.com --admin-password …] \\
        [--service-key "$CLIENTPRESS_GATEWAY_SERVICE_KEY" \\
         --internal identity=http://127.0.0.1:8101 --internal portals=http://127.0.0.1:8102 …]

Schemathesis is not one of our dependencies: install it in a virtualenv of its own, with
PyJWT for the internal services' proofs (`python3 -m venv /tmp/st && /tmp/st/bin/pip
install schemathesis 'pyjwt[crypto]'`) and name it with --schemathesis."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance,negative_data_rejection"
)
# Runs in Schemathesis's own interpreter: a fresh proof (docs/internal-api.md) every 15 s.
HOOKS = """
import os, time, jwt, schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
import base64
_text = os.environ["FUZZ_SERVICE_KEY"].strip()
_key = (load_pem_private_key(_text.encode(), None) if _text.startswith("-----")
        else Ed25519PrivateKey.from_private_bytes(base64.b64decode(_text)))

@schemathesis.auth(refresh_interval=15, retry_on=[])
class ServiceProof:
    def get(self, case, context):
        now = int(time.time())
        claims = {"iss": os.environ["FUZZ_CALLER"], "aud": os.environ["FUZZ_AUDIENCE"],
                  "iat": now, "exp": now + 60}
        return jwt.encode(claims, _key, algorithm="EdDSA")

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Service {data}"}
"""


def log_in(gateway: str, email: str, password: str) -> tuple[str, str]:
    """An administrator's session: (the Cookie header, the X-CSRF-Token)."""
    import http.cookiejar

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(gateway + "/login").read().decode()
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    if found is None:
        raise SystemExit("no csrf_token on /login")
    form = urllib.parse.urlencode(
        {"csrf_token": found.group(1), "email": email, "password": password, "next": ""}
    )
    try:
        landed = opener.open(gateway + "/login", data=form.encode()).geturl()
    except urllib.error.HTTPError as refused:
        raise SystemExit(f"the administrator's log in was refused ({refused.code})") from None
    if "/login" in landed:
        raise SystemExit("the administrator's log in was refused")
    cookies = {c.name: c.value or "" for c in jar}
    csrf = next(v for k, v in cookies.items() if k.endswith("cp_csrf"))
    return "; ".join(f"{k}={v}" for k, v in cookies.items()), csrf


def run(
    st: str,
    name: str,
    schema: str,
    base: str,
    args: argparse.Namespace,
    *extra: str,
    env: dict[str, str] | None = None,
) -> int:
    command = [st, "run", schema, "--url", base, "--checks", CHECKS]
    command += f"--mode all --seed {args.seed} --generation-deterministic".split()
    command += f"--max-examples {args.max_examples} --workers 1".split()
    command += ["--suppress-health-check", "all", "--report", "junit,har"]
    reports = Path(args.report_dir).resolve()
    reports.mkdir(parents=True, exist_ok=True)
    command += ["--report-dir", str(reports / name), *extra]
    print(f"fuzz: {name}: {schema}", flush=True)
    # From the report directory: Schemathesis keeps its cache (.schemathesis/) where it runs.
    environment = {**os.environ, **(env or {})}
    return subprocess.run(command, env=environment, cwd=reports).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--gateway", required=True, help="the gateway's URL")
    parser.add_argument(
        "--api-key", default=os.environ.get("GATEWAY_API_KEY"), help="a key: Bearer"
    )
    parser.add_argument("--admin-email")
    parser.add_argument("--admin-password", default=os.environ.get("ADMIN_PASSWORD"))
    parser.add_argument(
        "--service-key",
        default=os.environ.get("CLIENTPRESS_GATEWAY_SERVICE_KEY"),
        help="the gateway's SERVICE_KEY, to call the internal APIs as it",
    )
    parser.add_argument("--internal", action="append", default=[], metavar="NAME=URL")
    parser.add_argument("--schemathesis", default="schemathesis")
    parser.add_argument("--max-examples", type=int, default=50)
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--report-dir", default="fuzz-report")
    args = parser.parse_args(argv)
    gateway = args.gateway.rstrip("/")
    schema, base = gateway + "/api/v1/openapi.json", gateway + "/api/v1"
    failed = 0
    if args.api_key:
        auth = ("-H", f"Authorization: Bearer {args.api_key}")
        failed |= run(args.schemathesis, "gateway-key", schema, base, args, *auth)
    if args.admin_email and args.admin_password:
        cookie, csrf = log_in(gateway, args.admin_email, args.admin_password)
        session = ("-H", f"Cookie: {cookie}", "-H", f"X-CSRF-Token: {csrf}")
        failed |= run(args.schemathesis, "gateway-session", schema, base, args, *session)
    # Last: fuzzing identity's internal API changes passwords and revokes keys.
    for item in args.internal:
        if not args.service_key:
            raise SystemExit("--internal needs --service-key (the gateway's SERVICE_KEY)")
        name, _, url = item.partition("=")
        failed |= fuzz_internal(args, name, url.rstrip("/"))
    return 1 if failed else 0


def fuzz_internal(args: argparse.Namespace, name: str, url: str) -> int:
    from libs.common.service_auth import ServiceKeys, TokenSigner, parse_private_key

    signer = TokenSigner(ServiceKeys("gateway", parse_private_key(args.service_key), {}))
    request = urllib.request.Request(url + "/openapi.json", headers=signer.headers_for(name))
    with tempfile.TemporaryDirectory() as tmp:
        document = Path(tmp) / f"{name}.json"
        document.write_bytes(urllib.request.urlopen(request).read())
        (Path(tmp) / "fuzz_hooks.py").write_text(HOOKS)
        env = {
            "SCHEMATHESIS_HOOKS": "fuzz_hooks",
            "PYTHONPATH": tmp,
            "FUZZ_SERVICE_KEY": args.service_key,
            "FUZZ_CALLER": "gateway",
            "FUZZ_AUDIENCE": name,
        }
        return run(args.schemathesis, name, str(document), url, args, env=env)


if __name__ == "__main__":
    sys.exit(main())
