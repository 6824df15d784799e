"""The typed REST API: /openapi.json documents every answer, and the answers match it.

Runs against the same live community as the browser tests (``livecommunity``),
over real HTTP on 127.0.0.1; no browser needed. Also the relay prototype's two
calls, ``GET /api/get_relays_state`` and ``POST /api/update_hvalue``.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from livecommunity import TOKEN, Community, paris_today
from pydantic import BaseModel

from central.app import Coordinator
from central.recorder import Recorder
from central.web.live import community_view, grid_view, relays_view, sites_view
from central.web.models import CommunityNow, GridNow, Health, RelaysState, SitesPage

pytestmark = pytest.mark.integration

SUCCESS = ("200", "201", "202")
TEXT_TYPES = ("text/event-stream", "text/csv")


@pytest.fixture(scope="module")
def http(community: Community) -> Any:
    with httpx.Client(base_url=community.base_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def spec(http: httpx.Client) -> dict[str, Any]:
    res = http.get("/openapi.json")
    assert res.status_code == 200
    document: dict[str, Any] = res.json()
    return document


def success_of(operation: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    codes = [c for c in SUCCESS if c in operation["responses"]]
    assert codes, f"no success response in {operation.get('operationId')}"
    return codes[0], operation["responses"][codes[0]]


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = spec["components"]["schemas"][name]
    return schema


def validator(spec: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """The answer's schema as the root, the document's components beside it for its
    $refs, each object closed: a field the document does not name is an error too."""
    closed = {
        name: {**component, "additionalProperties": False}
        if "properties" in component else component
        for name, component in spec["components"]["schemas"].items()
    }
    return Draft202012Validator({**schema, "components": {"schemas": closed}})


def test_every_path_documents_a_typed_success_schema(spec: dict[str, Any]) -> None:
    untyped = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            code, response = success_of(operation)
            content = response.get("content", {})
            if "application/json" in content:
                schema = resolve(spec, content["application/json"].get("schema", {}))
                typed = bool(schema.get("properties")) or schema.get("type") == "array"
            else:
                typed = bool(content) and all(
                    t in TEXT_TYPES and c.get("schema", {}).get("type") == "string"
                    for t, c in content.items())
            if not typed:
                untyped.append(f"{method.upper()} {path} ({code}): {content}")
    assert untyped == [], "answers documented as bare objects:\n" + "\n".join(untyped)
    # Every documented JSON object says what its fields are.
    for name, schema in spec["components"]["schemas"].items():
        if schema.get("type") == "object" and "properties" not in schema:
            assert "additionalProperties" in schema, f"{name} is a bare object"


def test_answers_validate_against_the_document(
    http: httpx.Client, spec: dict[str, Any]
) -> None:
    checked = []
    for path, operations in spec["paths"].items():
        get = operations.get("get")
        if get is None or "{" in path:
            continue
        _, response = success_of(get)
        content = response.get("content", {})
        if "application/json" not in content:
            continue  # the event stream (the CSV has a path parameter)
        res = http.get(path)
        assert res.status_code == 200, f"GET {path}: {res.status_code} {res.text}"
        errors = list(validator(spec, content["application/json"]["schema"])
                      .iter_errors(res.json()))
        assert errors == [], f"GET {path}: {[e.message for e in errors]}"
        checked.append(path)
    assert {"/api/community", "/api/sites", "/api/cycles", "/api/grid",
            "/api/get_relays_state"} <= set(checked)
    # The stream and the CSV are documented as what they are.
    assert "text/event-stream" in spec["paths"]["/api/events"]["get"]["responses"]["200"][
        "content"]
    assert "text/csv" in spec["paths"]["/api/export/{table}.csv"]["get"]["responses"]["200"][
        "content"]


def unknown_keys(data: Any, model: type[BaseModel], where: str = "") -> list[str]:
    """Keys a view gives that its response model would drop (dotted paths)."""
    if not isinstance(data, dict):
        return []
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    out = [f"{where}{key}" for key in data if key not in fields]
    for key, field in fields.items():
        value = data.get(key)
        inner = field.annotation
        for arg in (*getattr(inner, "__args__", ()), inner):
            for sub in (arg, *getattr(arg, "__args__", ())):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    items = value if isinstance(value, list) else [value]
                    for i, item in enumerate(items[:3]):
                        out += unknown_keys(item, sub, f"{where}{key}[{i}].")
    return sorted(set(out))


def test_views_and_models_stay_in_step(community: Community) -> None:
    """What the views build is what the models document: nothing dropped on the way."""

    async def views(c: Coordinator) -> list[tuple[str, Any, type[BaseModel]]]:
        assert c.web is not None
        live = c.web.app.state.web.live
        return [
            ("community", community_view(c), CommunityNow),
            ("sites", sites_view(c, live, 0, 10), SitesPage),
            ("grid", grid_view(c), GridNow),
            ("relays", relays_view(c, live, 0, 10), RelaysState),
            ("health", c.health(), Health),
        ]

    dropped = {name: unknown_keys(data, model)
               for name, data, model in community.run(views)}
    assert all(not keys for keys in dropped.values()), f"not in the models: {dropped}"


def test_get_relays_state(http: httpx.Client) -> None:
    body = http.get("/api/get_relays_state").json()
    assert body["total"] == 3
    sites = {s["site"]: s for s in body["sites"]}
    assert list(sites) == ["s0", "s1", "s2"]
    s0 = {load["load"]: load for load in sites["s0"]["loads"]}
    assert s0["wh"]["on"] is True and s0["wh"]["power_kw"] == pytest.approx(1.5)
    assert s0["wh"]["reason"] == "allocation" and s0["wh"]["reported_at"].endswith("Z")
    # Announced in its status, never reported: known, state unknown.
    assert s0["ev"] == {"load": "ev", "on": None, "power_kw": None, "reason": None,
                        "reported_at": None}
    [heatpump] = sites["s1"]["loads"]
    assert heatpump["load"] == "heatpump" and heatpump["on"] is False
    assert sites["s2"]["loads"] == [] and sites["s2"]["online"] is True
    page = http.get("/api/get_relays_state", params={"offset": 1, "limit": 1}).json()
    assert page["total"] == 3 and [s["site"] for s in page["sites"]] == ["s1"]
    assert http.get("/api/get_relays_state", params={"limit": 0}).status_code == 422


def wait_level(http: httpx.Client, day: str, hour: int, level: int | None) -> dict[str, Any]:
    """The hour of /api/grid once its level is ``level`` (a liveness bound, not speed)."""
    deadline = time.monotonic() + 10
    while True:
        grid = http.get("/api/grid").json()
        [found] = [d for d in grid["days"] if d["day"] == day]
        hour_view: dict[str, Any] = found["hours"][hour]
        if hour_view["level"] == level or time.monotonic() > deadline:
            return hour_view
        time.sleep(0.05)


def test_update_hvalue_is_the_override(http: httpx.Client, community: Community) -> None:
    tomorrow = paris_today() + timedelta(days=1)
    day = tomorrow.isoformat()
    body = {"day": day, "hour": 21, "hvalue": 3}
    assert http.post("/api/update_hvalue", json=body).status_code == 401
    wrong = {"Authorization": "Bearer not-the-admin-token"}
    assert http.post("/api/update_hvalue", json=body, headers=wrong).status_code == 403
    admin = {"Authorization": f"Bearer {TOKEN}"}
    for bad in ({**body, "hvalue": 0}, {**body, "hvalue": 4}, {**body, "hour": 25},
                {**body, "level": 3}, {"day": day, "hour": 21}):
        res = http.post("/api/update_hvalue", json=bad, headers=admin)
        assert res.status_code == 422, (bad, res.text)
    past = {"day": (paris_today() - timedelta(days=2)).isoformat(), "hour": 3, "hvalue": 2}
    res = http.post("/api/update_hvalue", json=past, headers=admin)
    assert res.status_code == 422 and "already ended" in res.text, res.text

    res = http.post("/api/update_hvalue", json=body, headers=admin)
    assert res.status_code == 202, res.text
    assert res.json() == {"accepted": True, "day": day, "hour": 21, "level": 3}
    by_alias = wait_level(http, day, 21, 3)
    res = http.post("/api/grid/override", headers=admin,
                    json={"day": day, "hour": 22, "level": 3})
    assert res.status_code == 202
    by_override = wait_level(http, day, 22, 3)
    # The same effect: the level in force, an override over RTE's, stored in the records.
    for hour_view in (by_alias, by_override):
        assert hour_view["level"] == 3 and hour_view["override"] is True
        assert hour_view["rte_level"] == 1
    reader = Recorder.reader(community.settings.recorder.url)
    try:
        stored = reader.grid_overrides()
    finally:
        reader.close()
    assert stored[(tomorrow, 21)] == 3 and stored[(tomorrow, 22)] == 3
    # And clearing goes through the one endpoint that can say "null".
    res = http.post("/api/grid/override", headers=admin,
                    json={"day": day, "hour": 21, "level": None})
    assert res.status_code == 202
    assert wait_level(http, day, 21, 1)["override"] is False


def test_bench_web_answers_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The benchmark of the long answers runs (its structure, not its speed)."""
    from bench.web_answers import main

    main(["--sites", "50", "--repeat", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("/api/sites, 50 rows")
    assert [line.split()[0] for line in lines[1:]] == ["baseline", "validated", "orjson"]
