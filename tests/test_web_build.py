"""The committed front end: it matches a fresh build, and every page stays light."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

WEB = Path(__file__).resolve().parent.parent / "web"
PAGE_BUDGET = 60 * 1024  # issue 5: every page with its CSS and JS under 60 KB gzipped
Client = TestClient[web.Request, web.Application]


def node_modules() -> Path:
    """web/node_modules, which `make test` installs (npm) before the suite runs."""
    modules = WEB / "node_modules"
    if not (modules / ".bin" / "tailwindcss").exists():
        pytest.fail("web/node_modules is missing: run `make webdeps` (or `make test`)")
    return modules


def test_committed_css_matches_a_fresh_tailwind_build(tmp_path: Path) -> None:
    node_modules()
    out = tmp_path / "app.css"
    subprocess.run([str(WEB / "node_modules" / ".bin" / "tailwindcss"), "-i", "src/app.css",
                    "-o", str(out), "--minify"], cwd=WEB, check=True, capture_output=True,
                   timeout=120)
    committed = (WEB / "static" / "app.css").read_text()
    assert out.read_text() == committed, "web/static/app.css is stale: run `make css`"


def test_committed_htmx_is_the_pinned_package() -> None:
    modules = node_modules()
    pinned = json.loads((WEB / "package.json").read_text())["devDependencies"]["htmx.org"]
    installed = json.loads((modules / "htmx.org" / "package.json").read_text())["version"]
    assert installed == pinned
    fresh = (modules / "htmx.org" / "dist" / "htmx.min.js").read_bytes()
    assert (WEB / "static" / "htmx.min.js").read_bytes() == fresh, "run `make css`"


def test_front_end_packages_are_pinned_exactly() -> None:
    deps = json.loads((WEB / "package.json").read_text())["devDependencies"]
    assert {"@tailwindcss/cli", "tailwindcss", "htmx.org", "axe-core"} <= set(deps)
    for name, version in deps.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned: {version}"


def test_templates_load_nothing_from_other_sites() -> None:
    for template in (WEB / "templates").rglob("*.html"):
        text = template.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', text), template


async def test_every_page_with_its_css_and_js_is_under_60_kb_gzipped(
        app_client: Client, tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    await app_client.post("/api/jobs", json={"name": "Docs", "engine": "mirror",
                                             "sources": [str(tmp_path / "docs")],
                                             "destination": str(tmp_path / "b")})
    job_id = (await (await app_client.get("/api/jobs")).json())["jobs"][0]["id"]
    pages = ["/dashboard", "/jobs", "/jobs/new", f"/jobs/{job_id}", f"/jobs/{job_id}/edit",
             "/settings", "/logs"]
    sizes = {}
    for path in pages:
        resp = await app_client.get(path, headers={"Accept-Encoding": "gzip"},
                                    auto_decompress=False)
        assert resp.status == 200, path
        body = await resp.read()
        total = len(body) if resp.headers.get("Content-Encoding") == "gzip" \
            else len(gzip.compress(body))
        html = gzip.decompress(body).decode() if resp.headers.get(
            "Content-Encoding") == "gzip" else body.decode()
        for url in re.findall(r'(?:href|src)="(/static/[^"]+\.(?:css|js))"', html):
            asset = await app_client.get(url, headers={"Accept-Encoding": "gzip"},
                                         auto_decompress=False)
            total += len(await asset.read())
        sizes[path] = total
    assert all(size < PAGE_BUDGET for size in sizes.values()), sizes

