"""axe-core, the standard accessibility engine, run on a page: its WCAG 2.1 A and AA rules
and a readable list of what they found. axe's source comes from tests/browser/node_modules
(package.json pins it; `make install` runs npm ci) and is put into the page through the
DevTools protocol, which the pages' strict CSP does not govern, as a <script> tag would be."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from playwright.async_api import Page

AXE_JS = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
RUN = """options => axe.run(document, {
    runOnly: {type: "tag", values: options.tags},
    resultTypes: ["violations"],
}).then(results => results.violations.map(v => ({
    id: v.id,
    impact: v.impact,
    help: v.help,
    nodes: v.nodes.map(n => ({target: n.target.join(" "), summary: n.failureSummary})),
})))"""


@cache
def axe_source() -> str:
    if not AXE_JS.is_file():
        raise RuntimeError(
            f"{AXE_JS} is missing: run `make install` (npm ci in tests/browser) first"
        )
    return AXE_JS.read_text(encoding="utf-8")


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """What axe finds against WCAG 2.1 A and AA on the page as it is now."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(axe_source())
    violations: list[dict[str, Any]] = await page.evaluate(RUN, {"tags": TAGS})
    return violations


def describe(violations: list[dict[str, Any]]) -> str:
    """One paragraph per rule broken: its id, impact and help, then each element and why."""
    lines = []
    for violation in violations:
        lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']}")
        for node in violation["nodes"]:
            summary = " ".join(str(node["summary"]).split())
            lines.append(f"  {node['target']}: {summary}")
    return "\n".join(lines)
