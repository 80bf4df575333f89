"""/openapi.json names the error answers each route may give, so a client knows them all.

schemathesis (tests/api/test_schemathesis.py) checks every status it receives against the
schema; this checks the ones a fuzzer seldom or never provokes: a body that is not JSON text
(400), the key (401), a foreign Host (421), a cross-site browser (403), a body over the limit
(413) and a full queue (429 with Retry-After).
"""

from __future__ import annotations

from fastapi.testclient import TestClient

UNSAFE_METHODS = ("post", "put", "patch", "delete")


def test_every_route_documents_its_error_answers(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    missing = []
    for path, operations in paths.items():
        for method, operation in operations.items():
            expected = {"421"}
            if path != "/internal/ping":
                expected.add("401")
            if method in UNSAFE_METHODS:
                expected |= {"403", "413"}
            if "requestBody" in operation:  # a body that is not JSON text is FastAPI's 400
                expected.add("400")
            if "{" in path:
                expected.add("404")
            if lacking := expected - set(operation["responses"]):
                missing.append(f"{method.upper()} {path}: {sorted(lacking)}")
    assert missing == []


def test_a_full_queue_is_documented_with_its_retry_after(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/projects/{project_id}/generations", "/sdapi/v1/txt2img"):
        full = paths[path]["post"]["responses"]["429"]
        assert "Retry-After" in full["headers"], path
    error = paths["/api/v1/generations/{generation_id}"]["get"]["responses"]["404"]
    assert error["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Message"
    }


def test_a_body_that_is_not_json_text_is_the_documented_400(client: TestClient) -> None:
    answer = client.post(
        "/api/v1/projects", content=b"\xff\xfe{", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400 and isinstance(answer.json()["detail"], str)


PYDANTIC_WORDS = {"ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length"}


def _keys(node: object) -> set[str]:
    if isinstance(node, dict):
        return set(node).union(*(_keys(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_keys(value) for value in node))
    return set()


def test_the_limits_are_stated_in_json_schema_words(client: TestClient) -> None:
    """A validator placed before Field(ge=…) made pydantic publish `"ge": 64`, which JSON
    Schema does not know: clients (and schemathesis) saw steps, sizes and seeds unlimited."""
    schema = client.get("/openapi.json").json()
    assert _keys(schema) & PYDANTIC_WORDS == set()
    steps = schema["components"]["schemas"]["GenerationCreate"]["properties"]["steps"]
    assert {"minimum": 1, "maximum": 150}.items() <= steps["anyOf"][0].items()
