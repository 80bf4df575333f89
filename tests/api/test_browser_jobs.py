"""The generate page follows every job of its project live, in Chromium, on one event stream:
a job queued before the page opened, three submitted from it in quick succession, and one
queued through the REST API while it is open; each card moves and ends, every image arrives
once, and the gallery counter ends equal to the database's count. The generation's own page
still follows its one job on that job's stream."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.api.test_browser import (  # noqa: F401  (fixtures)
    DESKTOP,
    browser,
    data_dir,
    server,
    shoot,
    unlabelled_controls,
)
from tests.api.test_browser_status import new_project, wait_until

pytestmark = pytest.mark.browser
SMALL = {"width": 64, "height": 64}


def queue(base: str, project: int, steps: int, size: int = 64) -> int:
    """A job queued through the REST API, not the page; its id."""
    body = {"prompt": "a green square on a white background", "steps": steps,
            "width": size, "height": size}  # fmt: skip
    response = httpx.post(f"{base}/api/v1/projects/{project}/generations", json=body, timeout=30)
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def images_in_database(data: Path, project: int) -> int:
    """The project's images as the server's SQLite file holds them."""
    with contextlib.closing(sqlite3.connect(f"file:{data / 'dali.db'}?mode=ro", uri=True)) as db:
        query = "SELECT count(*) FROM images WHERE project_id = ?"
        return int(db.execute(query, (project,)).fetchone()[0])


def test_every_job_is_followed_live_on_one_stream(  # type: ignore[no-untyped-def]
    server,  # noqa: F811
    browser,  # noqa: F811
    data_dir: Path,  # noqa: F811
) -> None:
    base, model = server
    project = new_project(base, model, "Live jobs")
    # Long enough to be running when the page is drawn, and to hold the others in the queue.
    before = queue(base, project, steps=60, size=128)

    page = browser.new_page(viewport=DESKTOP)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    streams: list[str] = []
    page.on("request", lambda request: streams.append(request.url) if "/events" in request.url else None)  # fmt: skip
    drawn = page.goto(f"{base}/projects/{project}")
    assert drawn is not None
    # Drawn by the server (no script needed): the job queued before the page.
    assert f'data-generation="{before}"' in drawn.text()
    assert page.inner_text("#queue-count") == "1"
    # Record every card's progress bar as it moves (the script sets it on every step).
    page.evaluate(
        """() => { window.bars = {}; setInterval(() => {
             document.querySelectorAll('#jobs .job-card').forEach((card) => {
               const bar = card.querySelector('.job-progress');
               (window.bars[card.dataset.generation] ||= []).push([bar.value, bar.max]);
             }); }, 15); }"""
    )

    page.fill("#prompt", "a red circle in the top left on a blue background")
    page.fill("#steps", "20")
    page.select_option("#width", "64")
    page.select_option("#height", "64")
    for count in (2, 3, 4):  # three jobs, one after the other, as fast as the form allows
        page.click("#generate-button")
        wait_until(page, f"document.querySelectorAll('#jobs .job-card').length === {count}", 60)
    cards = page.locator("#jobs .job-card")
    mine = [int(cards.nth(i).get_attribute("data-generation") or 0) for i in range(3)][::-1]
    assert mine[0] > before and mine == sorted(mine)  # newest first on the page
    # Queued behind the long job, each says how many are ahead.
    assert "Queued" in page.inner_text(f"#jobs [data-generation='{mine[2]}'] .job-status")
    assert page.inner_text("#queue-count") == "4"

    # A job queued elsewhere (the REST API) while the page is open appears by itself.
    api_job = queue(base, project, steps=8)
    wait_until(page, f"!!document.querySelector(\"#jobs [data-generation='{api_job}']\")", 30)
    shoot(page, "12-jobs-queued")
    jobs = [before, *mine, api_job]
    deadline = time.monotonic() + 600
    while True:
        statuses = [page.inner_text(f"#jobs [data-generation='{job}'] .job-status") for job in jobs]
        if all(status.startswith("Done") for status in statuses):
            break
        assert time.monotonic() < deadline, statuses
        assert not any(s.startswith(("Failed", "Connection lost")) for s in statuses), statuses
        page.wait_for_timeout(200)

    # Every card moved through its steps live (the short REST job may finish between looks).
    bars = page.evaluate("window.bars")
    for job in [before, *mine]:
        moving = [value for value, top in bars[str(job)] if 0 < value < top]
        assert len(set(moving)) >= 3 and moving == sorted(moving), (job, bars[str(job)][:50])
    # Each job's image arrived once, and the counter says what the database holds.
    images = []
    for job in jobs:
        done = httpx.get(f"{base}/api/v1/generations/{job}", timeout=30).json()
        assert done["status"] == "succeeded"
        images += [f"/images/{image['id']}" for image in done["images"]]
    shown = page.eval_on_selector_all("#results a.thumb", "links => links.map(a => a.pathname)")
    assert sorted(shown) == sorted(images) and len(images) == 5
    assert int(page.inner_text("#gallery-count")) == images_in_database(data_dir, project) == 5
    assert page.inner_text("#queue-count") == "0"
    assert all(
        page.locator(f"#jobs [data-generation='{job}'] .job-cancel").is_hidden() for job in jobs
    )
    # One event stream for the whole page, never one per job.
    assert len(streams) == 1 and f"/api/v1/projects/{project}/events?after=" in streams[0], streams
    assert unlabelled_controls(page) == []
    shoot(page, "13-jobs-done")
    assert errors == []
    page.close()


def test_a_generation_page_still_follows_its_own_job(server, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The generation's own page keeps its stream of one job: progress, then the finished page."""
    base, model = server
    project = new_project(base, model, "Live generation page")
    job = queue(base, project, steps=60, size=128)
    page = browser.new_page(viewport=DESKTOP)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    streams: list[str] = []
    page.on("request", lambda request: streams.append(request.url) if "/events" in request.url else None)  # fmt: skip
    page.goto(f"{base}/generations/{job}")
    wait_until(page, "document.querySelector('#progress').value > 0", 300)
    assert page.inner_text("#job-detail").startswith("Step ")
    page.wait_for_selector("#generation[data-finished='true']", timeout=300_000)  # reloaded
    assert page.inner_text("#job-status").lower() == "succeeded"
    assert streams[0] == f"{base}/api/v1/generations/{job}/events"
    assert errors == []
    page.close()
