"""The run report across nights, checked in a real headless browser (Chromium driven by Playwright): two real
factory nights of one recipe, then the second night's page renders, every image loads, every link resolves, and the
trend table holds both nights; the same tables are Prefect artifacts of the flow run."""
from __future__ import annotations

import os
import shutil

import pytest

from tests.flows.test_factory import tiny_recipe


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory, tiny_model_dir):
    from flows.factory import factory_flow

    root = str(tmp_path_factory.mktemp("report") / "data")
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    recipe = tiny_recipe(tiny_model_dir, train_teacher={"phases": []})
    first = factory_flow(recipe=recipe, root=root, tracking=False)
    recipe["ingest"]["source"]["n"] = 10   # the source grew: the second night reuses the first night's rows
    second = factory_flow(recipe=recipe, root=root, tracking=False)
    return root, first, second


@pytest.mark.slow
def test_report_renders_in_a_real_browser_with_trends_over_nights(two_nights):
    browser = _browser()
    if browser is None:
        if os.environ.get("RLT_REQUIRE_BROWSER") == "1":
            pytest.fail("RLT_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH")
    from playwright.sync_api import sync_playwright

    root, first, second = two_nights
    page_path = os.path.join(second["report"]["uri"], "index.html")
    assert os.path.exists(page_path)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        try:
            page = b.new_page()
            failed: list[str] = []
            page.on("requestfailed", lambda req: failed.append(req.url))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto("file://" + page_path)
            page.wait_for_load_state("load")
            assert second["run_id"] in page.title()
            images = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, "
                                   "i.naturalWidth])")
            assert {"trends.png", "reward_terms.png", "seconds.png"} <= {src for src, _, _ in images}
            broken = [src for src, complete, width in images if not complete or width == 0]
            assert not broken, f"images that did not load: {broken}"
            links = page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))")
            assert links, "the page has a table of contents"
            for href in links:
                if href.startswith("#"):
                    assert page.query_selector(href) is not None, f"link {href} points nowhere"
                else:
                    assert os.path.exists(os.path.join(os.path.dirname(page_path), href)), href
            assert not failed and not errors, (failed, errors)
            # the trend table: one row per night of this recipe, oldest first, this night last and in bold
            trend = page.evaluate("Array.from(document.querySelectorAll('#trends ~ table')[0].rows).map(r => "
                                  "Array.from(r.cells).map(c => c.textContent.trim()))")
            header, rows = trend[0], trend[1:]
            assert len(rows) == 2 and header[:3] == ["night", "run", "status"]
            assert rows[0][1] == first["run_id"][-6:] and rows[1][1] == second["run_id"][-6:]
            reused = rows[1][header.index("rows reused")]
            assert reused not in ("-", "0"), "the second night reused the first night's explanations"
            text = page.inner_text("body")
            assert "Trends over 2 night(s)" in text and "undefined" not in text and "None" not in text
            assert "method" not in text and "object at 0x" not in text, "a Python object leaked into the page"
            evals = page.evaluate("Array.from(document.querySelectorAll('#evaluation ~ table')[0].rows).slice(1)"
                                  ".map(r => r.cells[4].textContent.trim())")
            assert evals and all(e == "3x1" for e in evals), evals
        finally:
            b.close()


@pytest.mark.slow
def test_report_tables_are_prefect_artifacts_of_the_flow_run(two_nights):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    _, _, second = two_nights
    # newest first: the server answers at most PREFECT_API_DEFAULT_LIMIT (200) rows, in id (uuid) order unless
    # asked; a Prefect home that has seen 100+ nights of this recipe would otherwise leave this night out at random
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["rlt-tiny-test-night", "rlt-tiny-test-trends"])),
            sort=ArtifactSort.CREATED_DESC, limit=20)
    by_key: dict[str, list] = {}
    for a in arts:
        by_key.setdefault(a.key, []).append(a)
    assert set(by_key) == {"rlt-tiny-test-night", "rlt-tiny-test-trends"}
    newest = max(by_key["rlt-tiny-test-trends"], key=lambda a: a.created)
    assert newest.type == "table" and second["run_id"][-6:] in str(newest.data)
    night = max(by_key["rlt-tiny-test-night"], key=lambda a: a.created)
    assert night.type == "markdown" and second["run_id"] in str(night.data)
