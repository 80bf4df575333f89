"""The generate page draws a card for each job queued or running when it is drawn, so they
show without JavaScript, and gives its script what the project's event stream needs."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for


def test_the_page_draws_the_queued_and_running_jobs_newest_first(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client)["id"]
    ended = wait_for(client, submit(client, project)["id"])["id"]
    fake.block_at = 2
    running = submit(client, project, prompt="a small red square", steps=5)["id"]
    assert fake.reached.wait(5)
    queued = submit(client, project, prompt="a large blue circle")["id"]

    page = client.get(f"/projects/{project}").text
    jobs = page[page.index('<ol class="jobs"') : page.index("</ol>")]
    assert f'data-latest="{queued}"' in jobs and f'data-project="{project}"' in jobs
    cards = re.findall(r'<li class="job-card" data-generation="(\d+)"', jobs)
    assert cards == [str(queued), str(running)]  # the finished one is in the gallery only
    assert 'In the queue: <span id="queue-count">2</span>' in page
    queued_card, running_card = jobs.split('<li class="job-card"')[1:]
    assert "Queued — 1 job ahead" in queued_card and "a large blue circle" in queued_card
    assert "Running" in running_card and "a small red square" in running_card
    assert 'max="5" value="1"' in running_card and "Step 1 of 5" in running_card  # held at 2
    # Without JavaScript each card links to its generation's page and cancels by a form.
    assert f'href="/generations/{running}"' in running_card
    assert f'action="/generations/{running}/cancel"' in running_card
    assert client.post(f"/generations/{queued}/cancel").status_code == 200  # → its page
    assert client.get(f"/api/v1/generations/{queued}").json()["status"] == "canceled"
    assert str(ended) not in cards
    fake.release.set()

    # Nothing queued: no card, the empty-output hint, and the empty card for the script.
    wait_for(client, running)
    page = client.get(f"/projects/{project}").text
    assert '<li class="job-card" data-generation' not in page
    assert 'In the queue: <span id="queue-count">0</span>' in page
    assert 'id="output-empty"' in page and '<template id="job-card-template">' in page
