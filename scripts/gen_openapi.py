"""Write docs/openapi.json, the public API's OpenAPI document, from the models the gateway's
routes declare (services/gateway/views/api.py): the exact bytes /api/v1/openapi.json serves.

    python scripts/gen_openapi.py           # write docs/openapi.json (make openapi)
    python scripts/gen_openapi.py --check   # exit 1 if the committed file is stale"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET = ROOT / "docs" / "openapi.json"


def render() -> bytes:
    from services.gateway.views.openapi import OPENAPI_JSON

    return OPENAPI_JSON


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    fresh = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_bytes() != fresh:
            print(f"{TARGET.relative_to(ROOT)} is stale: run make openapi")
            return 1
        return 0
    TARGET.write_bytes(fresh)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
