"""The run's report artifact in the real Prefect UI: its plots are shown, not broken links (issue L, item 3)."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from rows import problems_file
from servers import prefect_server

pytestmark = pytest.mark.slow  # a UI-enabled Prefect server, a small run and Chromium


def test_the_report_artifact_page_shows_every_plot(tmp_path):
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium): `apt-get install chromium`")
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

    (tmp_path / "prefect-home").mkdir()
    with prefect_server(tmp_path / "prefect-home") as server:
        env = {
            **os.environ,
            "PREFECT_API_URL": server.api,
            "PREFECT_HOME": str(tmp_path / "client-home"),
            "HEAL_CACHE_DIR": str(tmp_path / "cache"),
        }
        run = subprocess.run(
            [
                "heal",
                "run",
                "--run-id",
                "shown",
                "--set",
                f"problems.uri={problems_file(tmp_path / 'p.jsonl', 'generation', 6)}",
                "--set",
                f"evaluation.uri={problems_file(tmp_path / 'e.jsonl', 'eval', 3)}",
                "--set",
                f"storage.uri={tmp_path / 'store'}",
                "--set",
                "pace.seeds=[0]",
                "--set",
                "pace.epochs=1",
                "--set",
                "orchestration.shard_size=3",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        artifact = (
            httpx.post(
                f"{server.api}/artifacts/latest/filter", json={"artifacts": {"key": {"any_": ["heal-run-report"]}}}
            )
            .raise_for_status()
            .json()[0]
        )
        written = {
            png.stem: png.read_bytes() for png in (tmp_path / "store" / "runs" / "shown" / "plots").glob("*.png")
        }
        inline = dict(
            line[2:].split("](data:image/png;base64,")
            for line in artifact["data"].splitlines()
            if line.startswith("![") and "](data:" in line
        )
        assert len(written) >= 2 and {k: base64.b64decode(v.rstrip(")")) for k, v in inline.items()} == written
        assert (tmp_path / "store" / "runs" / "shown" / "report.md").read_text().count("](plots/") == len(written)

        base = server.api.removesuffix("/api")
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(chromium),
                headless=True,
                args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 2400})
            page.route(
                "**/*",
                lambda route: route.continue_() if route.request.url.startswith((base, "data:")) else route.abort(),
            )
            page.goto(f"{base}/artifacts/artifact/{artifact['latest_id']}", wait_until="networkidle")
            page.wait_for_selector("img[src^='data:image/png']", timeout=30_000)
            shown = page.eval_on_selector_all(
                "img[src^='data:image/png']",
                "imgs => imgs.map(i => ({alt: i.alt, width: i.naturalWidth, height: i.naturalHeight, "
                "seen: i.getBoundingClientRect().width > 0 && i.complete}))",
            )
            page.screenshot(path=str(tmp_path / "artifact.png"), full_page=True)
            browser.close()
    print(f"\nscreenshot: {tmp_path / 'artifact.png'}")
    assert sorted(s["alt"] for s in shown) == sorted(written), shown
    size = {
        name: (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) for name, png in written.items()
    }
    assert all(s["seen"] and (s["width"], s["height"]) == size[s["alt"]] for s in shown), (
        shown,
        size,
    )  # decoded, shown
