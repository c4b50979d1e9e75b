"""Container health probe: ``python /app/deploy/healthcheck.py [/healthz|/readyz]``.

Asks the service named by ``SERVICE`` on its management port (``<SERVICE>_MANAGEMENT_PORT``,
else ``MANAGEMENT_PORT``, else the service's default; the public port serves no health
routes) and exits 0 on a 2xx answer, 1 otherwise. Standard library only: the image has no
curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

# The services' management ports (services/<name>/settings.py).
DEFAULT_PORTS = {
    "gateway": 9080,
    "identity": 9101,
    "portals": 9102,
    "invitations": 9103,
    "mailer": 9104,
}
# A service bound to every interface is asked on loopback.
ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}  # noqa: S104 - compared, never bound


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    service = os.environ.get("SERVICE", "")
    if service not in DEFAULT_PORTS:
        print(f"healthcheck: unknown SERVICE {service!r}", file=sys.stderr)
        return 1
    prefix = service.upper()
    port = (
        os.environ.get(f"{prefix}_MANAGEMENT_PORT")
        or os.environ.get("MANAGEMENT_PORT")
        or str(DEFAULT_PORTS[service])
    )
    host = os.environ.get(f"{prefix}_HOST", "")
    host = "127.0.0.1" if host in ANY_ADDRESS else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    url = f"http://{host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        print(f"healthcheck: {url} answered {exc.code}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"healthcheck: {url} unreachable: {exc}", file=sys.stderr)
        return 1
    return 0 if 200 <= status < 300 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
