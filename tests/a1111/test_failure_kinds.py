"""The A1111 API's status code for a failed job comes from the job's failure kind."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.fakes import FakeGenerator

TXT2IMG = "/sdapi/v1/txt2img"
SMALL = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64}


def test_an_internal_error_and_running_out_of_memory_are_500(
    client: TestClient, fake: FakeGenerator
) -> None:
    for raised in (RuntimeError("boom"), RuntimeError("CUDA out of memory. Tried to allocate")):
        fake.fail_with = raised
        response = client.post(TXT2IMG, json=SMALL)
        assert response.status_code == 500, response.text
        assert str(raised) in response.json()["detail"]
    fake.fail_with = None
    assert client.post(TXT2IMG, json=SMALL).status_code == 200
