"""The payload contract (PROTOCOL.md), parametrised over every topic kind.

One valid example per model round-trips through ``encode``/``decode``; every
bad input named in the developers' guide comes back as a ``Rejection`` with a
sensible reason, never as an exception; unknown fields are ignored; and a
fuzzer feeds ``decode`` arbitrary bytes, arbitrary JSON and mutated examples
for every kind.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    MAX_PAYLOAD_BYTES,
    Limits,
    Payload,
    Rejection,
    Route,
    TopicKind,
    Topics,
    decode,
    encode,
)
from protocol.codec import MODELS

K = TopicKind
TOPICS = Topics("c1")

ROUTES: dict[TopicKind, Route] = {}
for _topic in (
    TOPICS.site_status("s1"),
    TOPICS.netload("s1"),
    TOPICS.flex("s1"),
    TOPICS.report("s1"),
    TOPICS.load_state("s1", "wh"),
    TOPICS.coordinator_status(),
    TOPICS.cycle_request(),
    TOPICS.alloc("s1"),
    TOPICS.ack("s1"),
    TOPICS.cycle_closed(),
    TOPICS.grid_signal(),
    TOPICS.grid_shed(),
    TOPICS.admin_signal_set(),
):
    _route = TOPICS.parse(_topic)
    assert _route is not None, _topic
    ROUTES[_route.kind] = _route

CYCLE = "2026-06-21T12:15:00Z"

# One complete example per model, written exactly as ``encode`` writes it.
EXAMPLES: dict[TopicKind, dict[str, Any]] = {
    K.SITE_STATUS: {"v": 1, "state": "online", "version": "1.2.0", "loads": ["wh", "hp"]},
    K.NETLOAD: {"v": 1, "ts": "2026-06-21T12:14:30Z", "net_export_kw": -3.25},
    K.FLEX: {
        "v": 1,
        "cycle": CYCLE,
        "flex_kw": 4.5,
        "loads": [
            {
                "id": "wh",
                "kind": "water_heater",
                "min_kw": 2.0,
                "max_kw": 2.5,
                "priority": 10,
                "until": "2026-06-21T18:00:00Z",
                "energy_kwh": 3.0,
            },
            {
                "id": "ev-1",
                "kind": "ev_charger",
                "min_kw": 1.4,
                "max_kw": 2.0,
                "priority": None,
                "until": None,
                "energy_kwh": None,
            },
        ],
    },
    K.REPORT: {
        "v": 1,
        "seq": 42,
        "period": "2026-06-21T12:00:00Z",
        "import_kwh": 0.5,
        "export_kwh": 1.25,
        "allocated_kwh": 0.75,
        "used_kwh": 0.7,
    },
    K.LOAD_STATE: {"v": 1, "on": True, "power_kw": 2.4, "reason": "allocation",
                   "energy_kwh": 12.5},
    K.COORDINATOR_STATUS: {"v": 1, "state": "online", "version": "0.1.0", "epoch": 7},
    K.CYCLE_REQUEST: {
        "v": 1,
        "cycle": CYCLE,
        "surplus_kw": 30.0,
        "period_start": CYCLE,
        "period_end": "2026-06-21T12:30:00Z",
        "reply_by": "2026-06-21T12:15:30Z",
    },
    K.ALLOC: {
        "v": 1,
        "cycle": CYCLE,
        "alloc_kw": 2.5,
        "rank": 1,
        "valid_until": "2026-06-21T12:30:00Z",
        "epoch": 7,
    },
    K.ACK: {"v": 1, "seq": 42},
    K.CYCLE_CLOSED: {
        "v": 1,
        "cycle": CYCLE,
        "reason": "exhausted",
        "surplus_kw": 30.0,
        "allocated_kw": 30.0,
        "replies": 3,
        "sites": 5,
    },
    K.GRID_SIGNAL: {
        "v": 1,
        "source": "ecowatt",
        "day": "2026-01-15",
        "hour": 8,
        "level": 2,
        "day_level": 3,
        "hours": [1] * 7 + [2, 2, 3, 3, 2] + [1] * 12,
        "updated": "2026-01-15T07:00:00Z",
    },
    K.GRID_SHED: {
        "v": 1,
        "level": 2,
        "from": "2026-01-15T08:00:00Z",
        "until": "2026-01-15T10:00:00Z",
        "reason": "ecowatt",
    },
    K.ADMIN_SIGNAL_SET: {"v": 1, "day": "2026-01-15", "hour": 8, "level": 3},
}

Path = tuple[str | int, ...]

TIME_PATHS: dict[TopicKind, list[Path]] = {
    K.NETLOAD: [("ts",)],
    K.FLEX: [("cycle",), ("loads", 0, "until")],
    K.REPORT: [("period",)],
    K.CYCLE_REQUEST: [("cycle",), ("period_start",), ("period_end",), ("reply_by",)],
    K.ALLOC: [("cycle",), ("valid_until",)],
    K.CYCLE_CLOSED: [("cycle",)],
    K.GRID_SIGNAL: [("updated",)],
    K.GRID_SHED: [("from",), ("until",)],
}
# Powers a site uses or offers: >= 0 and at most the per-site cap.
SITE_POWER_PATHS: dict[TopicKind, list[Path]] = {
    K.FLEX: [("flex_kw",), ("loads", 0, "min_kw"), ("loads", 0, "max_kw")],
    K.LOAD_STATE: [("power_kw",)],
    K.ALLOC: [("alloc_kw",)],
}
SITE_KINDS = [kind for kind, route in ROUTES.items() if route.site is not None]
OTHER_KINDS = [kind for kind, route in ROUTES.items() if route.site is None]
KNOWN_REASONS = {
    "oversized",
    "malformed_json",
    "not_an_object",
    "bad_version",
    "site_mismatch",
    "invalid",
}
UTC_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


def _paths(value: Any, prefix: Path = ()) -> list[tuple[Path, Any]]:
    out: list[tuple[Path, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.extend(_paths(item, (*prefix, i)))
    else:
        out.append((prefix, value))
    return out


def _numbers(kind: TopicKind) -> list[Path]:
    return [
        path
        for path, value in _paths(EXAMPLES[kind])
        if isinstance(value, int | float) and not isinstance(value, bool) and path != ("v",)
    ]


def _bools(kind: TopicKind) -> list[Path]:
    return [path for path, value in _paths(EXAMPLES[kind]) if isinstance(value, bool)]


def with_value(kind: TopicKind, path: Path, value: Any) -> dict[str, Any]:
    """A copy of the kind's example with ``value`` at ``path``."""
    data = copy.deepcopy(EXAMPLES[kind])
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def raw_with(kind: TopicKind, path: Path, token: bytes) -> bytes:
    """The example's JSON with a raw (possibly non-JSON) token at ``path``."""
    marker = "__raw_token__"
    return orjson.dumps(with_value(kind, path, marker)).replace(f'"{marker}"'.encode(), token)


def dumps(data: Any) -> bytes:
    return orjson.dumps(data)


def field_name(path: Path) -> str:
    return str(path[-1])


def expect_rejection(
    kind: TopicKind, payload: bytes | str, reason: str | set[str], limits: Limits | None = None
) -> Rejection:
    route = ROUTES[kind]
    result = decode(route, payload) if limits is None else decode(route, payload, limits)
    assert isinstance(result, Rejection), f"accepted: {result!r}"
    reasons = {reason} if isinstance(reason, str) else reason
    assert result.reason in reasons, result
    assert result.kind == kind
    assert result.site == route.site
    assert result.detail
    return result


def expect_accepted(kind: TopicKind, payload: bytes | str, limits: Limits | None = None) -> Payload:
    route = ROUTES[kind]
    result = decode(route, payload) if limits is None else decode(route, payload, limits)
    assert not isinstance(result, Rejection), result
    assert isinstance(result, MODELS[kind])
    return result


def _cases(table: dict[TopicKind, list[Path]]) -> list[Any]:
    return [
        pytest.param(kind, path, id=f"{kind}-{'.'.join(map(str, path))}")
        for kind, paths in table.items()
        for path in paths
    ]


NUMBER_CASES = _cases({kind: _numbers(kind) for kind in K})
BOOL_CASES = _cases({kind: _bools(kind) for kind in K})
TIME_CASES = _cases(TIME_PATHS)
POWER_CASES = _cases(SITE_POWER_PATHS)
def _get(kind: TopicKind, path: Path) -> Any:
    node: Any = EXAMPLES[kind]
    for key in path:
        node = node[key]
    return node


FLOAT_CASES = _cases(
    {kind: [p for p in _numbers(kind) if isinstance(_get(kind, p), float)] for kind in K}
)


def test_every_kind_has_an_example_and_a_route() -> None:
    assert set(EXAMPLES) == set(TopicKind) == set(ROUTES) == set(MODELS)


def test_tables_name_real_fields() -> None:
    for table in (TIME_PATHS, SITE_POWER_PATHS):
        for kind, paths in table.items():
            for path in paths:
                _get(kind, path)
    assert FLOAT_CASES and NUMBER_CASES and BOOL_CASES


# Valid examples -------------------------------------------------------------


@pytest.mark.parametrize("kind", list(K))
def test_example_round_trips_through_encode_and_decode(kind: TopicKind) -> None:
    message = expect_accepted(kind, dumps(EXAMPLES[kind]))
    wire = encode(message)
    assert isinstance(wire, bytes)
    assert orjson.loads(wire) == EXAMPLES[kind]
    assert decode(ROUTES[kind], wire) == message
    # The same message arriving as text decodes the same.
    assert decode(ROUTES[kind], wire.decode()) == message


@pytest.mark.parametrize(("kind", "path"), TIME_CASES)
def test_times_are_written_in_utc_with_z(kind: TopicKind, path: Path) -> None:
    # Sent with an explicit +00:00 offset, written back with Z.
    value = _get(kind, path)
    data = with_value(kind, path, value.replace("Z", "+00:00"))
    wire = encode(expect_accepted(kind, dumps(data)))
    written: Any = orjson.loads(wire)
    for key in path:
        written = written[key]
    assert written == value
    assert UTC_Z.fullmatch(written)


@pytest.mark.parametrize("kind", list(K))
def test_unknown_extra_fields_are_ignored(kind: TopicKind) -> None:
    data = copy.deepcopy(EXAMPLES[kind])
    data["future_field"] = {"nested": [1, 2, {"x": None}]}
    data["another"] = "ignored"
    plain = expect_accepted(kind, dumps(EXAMPLES[kind]))
    extended = expect_accepted(kind, dumps(data))
    assert extended == plain
    assert b"future_field" not in encode(extended)


def test_unknown_fields_in_a_flex_load_are_ignored() -> None:
    data = copy.deepcopy(EXAMPLES[K.FLEX])
    data["loads"][0]["vendor_hint"] = "shelly"
    assert expect_accepted(K.FLEX, dumps(data)) == expect_accepted(K.FLEX, dumps(EXAMPLES[K.FLEX]))


# Bad input, for every kind ----------------------------------------------------


@pytest.mark.parametrize("kind", list(K))
@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b'{"v":1,}', b"{'v': 1}", b"not json", b'{"v":1} trailing', b"\x00"],
    ids=["empty", "open-brace", "trailing-comma", "single-quotes", "text", "trailing", "nul"],
)
def test_malformed_json_is_rejected(kind: TopicKind, payload: bytes) -> None:
    expect_rejection(kind, payload, "malformed_json")


@pytest.mark.parametrize("kind", list(K))
@pytest.mark.parametrize(
    "payload",
    [b"[]", b'[{"v":1}]', b'"online"', b"1", b"1.5", b"null", b"true"],
    ids=["empty-list", "list", "string", "int", "float", "null", "bool"],
)
def test_non_object_json_is_rejected(kind: TopicKind, payload: bytes) -> None:
    rejection = expect_rejection(kind, payload, "not_an_object")
    assert "JSON" in rejection.detail


@pytest.mark.parametrize("kind", list(K))
@pytest.mark.parametrize(
    "version",
    [None, 2, 0, -1, "1", [1], {"v": 1}],
    ids=["missing", "2", "0", "-1", "str", "list", "obj"],
)
def test_a_version_other_than_1_is_rejected(kind: TopicKind, version: Any) -> None:
    data = copy.deepcopy(EXAMPLES[kind])
    if version is None:
        del data["v"]
    else:
        data["v"] = version
    rejection = expect_rejection(kind, dumps(data), "bad_version")
    assert "v=" in rejection.detail


@pytest.mark.parametrize("kind", [K.FLEX, K.ACK])
def test_v_true_is_not_version_1(kind: TopicKind) -> None:
    # True == 1 in Python; the JSON boolean is still not the number 1.
    data = copy.deepcopy(EXAMPLES[kind])
    data["v"] = True
    expect_rejection(kind, dumps(data), {"bad_version", "invalid"})


@pytest.mark.parametrize("kind", list(K))
def test_oversized_payload_is_rejected_and_the_limit_itself_is_accepted(kind: TopicKind) -> None:
    base = dumps({**EXAMPLES[kind], "pad": ""})
    at_limit = dumps({**EXAMPLES[kind], "pad": "x" * (MAX_PAYLOAD_BYTES - len(base))})
    assert len(at_limit) == MAX_PAYLOAD_BYTES == 16 * 1024
    expect_accepted(kind, at_limit)
    over = dumps({**EXAMPLES[kind], "pad": "x" * (MAX_PAYLOAD_BYTES - len(base) + 1)})
    rejection = expect_rejection(kind, over, "oversized")
    assert str(MAX_PAYLOAD_BYTES) in rejection.detail
    # Far larger payloads are refused by size, before any parsing.
    expect_rejection(kind, b"[" * (MAX_PAYLOAD_BYTES * 4), "oversized")


@pytest.mark.parametrize("kind", list(K))
@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe{}",
        b'{"v":1,"x":"\xc3\x28"}',
        b'{"v":1,"x":"\xed\xa0\x80"}',
        b'{"v":1,"x":"\xe2\x82"}',
        b"\xef\xbb\xbf{}",
    ],
    ids=["ff-fe", "bad-continuation", "encoded-surrogate", "truncated", "bom"],
)
def test_non_utf8_bytes_are_rejected(kind: TopicKind, payload: bytes) -> None:
    expect_rejection(kind, payload, "malformed_json")


@pytest.mark.parametrize("payload", ["\ud800", '{"v":1,"x":"\udc00"}'], ids=["bare", "in-string"])
def test_str_payload_with_a_lone_surrogate_is_a_rejection(payload: str) -> None:
    # decode() takes str too; a lone surrogate has no UTF-8 form.
    expect_rejection(K.FLEX, payload, "malformed_json")


@pytest.mark.parametrize(("kind", "path"), NUMBER_CASES)
@pytest.mark.parametrize(
    "bad", ["3", "", True, [1], {"kw": 1}], ids=["str", "empty", "bool", "list", "obj"]
)
def test_wrong_type_for_a_number_is_rejected(kind: TopicKind, path: Path, bad: Any) -> None:
    rejection = expect_rejection(kind, dumps(with_value(kind, path, bad)), "invalid")
    assert field_name(path) in rejection.detail


@pytest.mark.parametrize(("kind", "path"), BOOL_CASES)
@pytest.mark.parametrize("bad", [1, 0, "true", None], ids=["1", "0", "str", "null"])
def test_wrong_type_for_a_bool_is_rejected(kind: TopicKind, path: Path, bad: Any) -> None:
    rejection = expect_rejection(kind, dumps(with_value(kind, path, bad)), "invalid")
    assert field_name(path) in rejection.detail


@pytest.mark.parametrize(("kind", "path"), TIME_CASES)
@pytest.mark.parametrize(
    "bad",
    [1750508100, 1750508100.5, True, "not a time", "2026-06-21", "", ["2026-06-21T12:15:00Z"]],
    ids=["int", "float", "bool", "text", "date-only", "empty", "list"],
)
def test_wrong_type_for_a_time_is_rejected(kind: TopicKind, path: Path, bad: Any) -> None:
    rejection = expect_rejection(kind, dumps(with_value(kind, path, bad)), "invalid")
    assert field_name(path) in rejection.detail


@pytest.mark.parametrize(("kind", "path"), TIME_CASES)
def test_naive_time_is_rejected(kind: TopicKind, path: Path) -> None:
    naive = _get(kind, path).removesuffix("Z")
    rejection = expect_rejection(kind, dumps(with_value(kind, path, naive)), "invalid")
    assert field_name(path) in rejection.detail
    assert "offset" in rejection.detail


@pytest.mark.parametrize(("kind", "path"), TIME_CASES)
@pytest.mark.parametrize("offset", ["+02:00", "-05:00", "+00:30", "+01:00"])
def test_non_utc_offset_is_rejected(kind: TopicKind, path: Path, offset: str) -> None:
    shifted = _get(kind, path).removesuffix("Z") + offset
    rejection = expect_rejection(kind, dumps(with_value(kind, path, shifted)), "invalid")
    assert field_name(path) in rejection.detail
    assert "UTC" in rejection.detail


@pytest.mark.parametrize(("kind", "path"), FLOAT_CASES)
@pytest.mark.parametrize(
    "token",
    [b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf", b"1e400", b"-1e400"],
    ids=["NaN", "Infinity", "-Infinity", "nan", "inf", "1e400", "-1e400"],
)
def test_non_finite_numbers_are_rejected(kind: TopicKind, path: Path, token: bytes) -> None:
    expect_rejection(kind, raw_with(kind, path, token), {"malformed_json", "invalid"})


@pytest.mark.parametrize(("kind", "path"), POWER_CASES)
def test_negative_power_is_rejected(kind: TopicKind, path: Path) -> None:
    rejection = expect_rejection(kind, dumps(with_value(kind, path, -0.5)), "invalid")
    assert field_name(path) in rejection.detail
    assert "negative" in rejection.detail


@pytest.mark.parametrize(("kind", "path"), POWER_CASES)
def test_power_above_the_default_cap_of_50_kw_is_rejected(kind: TopicKind, path: Path) -> None:
    if path[-1] == "min_kw":  # keep min <= max so the cap is the only fault
        data = with_value(kind, path, 50.5)
        data["loads"][0]["max_kw"] = 50.5
    else:
        data = with_value(kind, path, 50.5)
    rejection = expect_rejection(kind, dumps(data), "invalid")
    assert field_name(path) in rejection.detail
    assert "cap" in rejection.detail
    # The cap itself is allowed.
    at_cap = with_value(kind, path, 50.0)
    if path[-1] == "min_kw":
        at_cap["loads"][0]["max_kw"] = 50.0
    expect_accepted(kind, dumps(at_cap))


@pytest.mark.parametrize(("kind", "path"), POWER_CASES)
def test_configured_cap_is_applied(kind: TopicKind, path: Path) -> None:
    limits = Limits(max_site_kw=10)
    data = with_value(kind, path, 10.5)
    if path[-1] == "min_kw":
        data["loads"][0]["max_kw"] = 10.5
    rejection = expect_rejection(kind, dumps(data), "invalid", limits)
    assert "10" in rejection.detail
    # Under the default limits the same payload is fine.
    expect_accepted(kind, dumps(data))
    at_cap = with_value(kind, path, 10.0)
    if path[-1] == "min_kw":
        at_cap["loads"][0]["max_kw"] = 10.0
    expect_accepted(kind, dumps(at_cap), limits)


@pytest.mark.parametrize("value", [-50.0, -3.25, 0.0, 3.25, 50.0])
def test_net_export_is_signed_within_the_cap(value: float) -> None:
    # PROTOCOL.md, Sign: < 0 means the site draws from the grid.
    message = expect_accepted(K.NETLOAD, dumps(with_value(K.NETLOAD, ("net_export_kw",), value)))
    assert message.net_export_kw == value  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", [-50.5, 50.5, -1000.0])
def test_net_export_beyond_the_cap_is_rejected(value: float) -> None:
    data = with_value(K.NETLOAD, ("net_export_kw",), value)
    rejection = expect_rejection(K.NETLOAD, dumps(data), "invalid")
    assert "net_export_kw" in rejection.detail


def test_net_export_follows_the_configured_cap() -> None:
    limits = Limits(max_site_kw=10)
    expect_rejection(
        K.NETLOAD, dumps(with_value(K.NETLOAD, ("net_export_kw",), -10.5)), "invalid", limits
    )
    expect_accepted(K.NETLOAD, dumps(with_value(K.NETLOAD, ("net_export_kw",), -10.0)), limits)


@pytest.mark.parametrize("kind", SITE_KINDS)
@pytest.mark.parametrize("key", ["site", "site_id"])
def test_payload_naming_another_site_is_rejected(kind: TopicKind, key: str) -> None:
    data = {**EXAMPLES[kind], key: "s2"}
    rejection = expect_rejection(kind, dumps(data), "site_mismatch")
    assert "s2" in rejection.detail and "s1" in rejection.detail
    # Naming the topic's own site is harmless.
    assert expect_accepted(kind, dumps({**EXAMPLES[kind], key: "s1"})) == expect_accepted(
        kind, dumps(EXAMPLES[kind])
    )


@pytest.mark.parametrize("kind", SITE_KINDS)
@pytest.mark.parametrize("named", [5, "S1", ["s1"]], ids=["int", "case", "list"])
def test_a_site_field_that_is_not_the_topic_site_is_a_mismatch(kind: TopicKind, named: Any) -> None:
    expect_rejection(kind, dumps({**EXAMPLES[kind], "site": named}), "site_mismatch")


@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_a_site_field_on_a_community_topic_is_just_an_unknown_field(kind: TopicKind) -> None:
    expect_accepted(kind, dumps({**EXAMPLES[kind], "site": "s2"}))


def test_load_with_min_above_max_is_rejected() -> None:
    data = with_value(K.FLEX, ("loads", 0, "min_kw"), 3.0)  # max_kw is 2.5
    rejection = expect_rejection(K.FLEX, dumps(data), "invalid")
    assert "min_kw" in rejection.detail and "max_kw" in rejection.detail


@pytest.mark.parametrize("load_id", ["WH", "-wh", "_wh", "", "a" * 33, "w h", "wh/1", "wh\n", 7])
def test_invalid_load_id_is_rejected(load_id: Any) -> None:
    data = with_value(K.FLEX, ("loads", 0, "id"), load_id)
    rejection = expect_rejection(K.FLEX, dumps(data), "invalid")
    assert "loads.0.id" in rejection.detail


@pytest.mark.parametrize("load_id", ["WH", "-wh", "a" * 33])
def test_invalid_load_id_in_site_status_is_rejected(load_id: str) -> None:
    data = with_value(K.SITE_STATUS, ("loads", 0), load_id)
    rejection = expect_rejection(K.SITE_STATUS, dumps(data), "invalid")
    assert "loads" in rejection.detail


@pytest.mark.parametrize(
    ("kind", "path", "bad"),
    [
        (K.SITE_STATUS, ("state",), "maybe"),
        (K.LOAD_STATE, ("reason",), "because"),
        (K.FLEX, ("loads", 0, "kind"), "toaster"),
        (K.CYCLE_CLOSED, ("reason",), "bored"),
        (K.GRID_SIGNAL, ("source",), "rumour"),
        (K.GRID_SIGNAL, ("level",), 4),
        (K.GRID_SIGNAL, ("hours",), [1] * 22),
        (K.GRID_SHED, ("reason",), "why"),
        (K.GRID_SHED, ("level",), -1),
        (K.ADMIN_SIGNAL_SET, ("level",), 4),
        (K.ALLOC, ("rank",), 0),
        (K.REPORT, ("seq",), -1),
        (K.REPORT, ("used_kwh",), -0.1),
        (K.CYCLE_REQUEST, ("surplus_kw",), -1.0),
        (K.ACK, ("seq",), 1.5),
    ],
)
def test_out_of_range_or_unknown_values_are_rejected(kind: TopicKind, path: Path, bad: Any) -> None:
    rejection = expect_rejection(kind, dumps(with_value(kind, path, bad)), "invalid")
    assert field_name(path if isinstance(path[-1], str) else path[:-1]) in rejection.detail


@pytest.mark.parametrize("kind", list(K))
def test_missing_required_field_is_rejected(kind: TopicKind) -> None:
    required = [
        name
        for name, info in MODELS[kind].model_fields.items()
        if info.is_required() and name != "v"
    ]
    for name in required:
        data = copy.deepcopy(EXAMPLES[kind])
        alias = MODELS[kind].model_fields[name].alias or name
        del data[alias]
        rejection = expect_rejection(kind, dumps(data), "invalid")
        assert alias in rejection.detail, (name, rejection)


# Fuzzing: decode never raises, for every kind ---------------------------------

# Parametrised per kind so every kind is always fuzzed; a modest count each
# keeps the whole set fast (13 kinds x 4 generators).


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["2026-06-21T12:15:00Z", "2026-06-21T12:15:00+02:00", "s1", "s2", "wh"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=15,
)


def check_decoded(kind: TopicKind, payload: bytes | str) -> None:
    route = ROUTES[kind]
    result = decode(route, payload)
    assert isinstance(result, Payload | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in KNOWN_REASONS
        assert result.kind == kind
    else:
        assert isinstance(result, MODELS[kind])
        # Anything accepted re-encodes to something accepted and equal.
        assert decode(route, encode(result)) == result


@pytest.mark.parametrize("kind", list(K))
@fuzz(30)
@given(payload=st.binary(max_size=300))
def test_decode_never_raises_on_arbitrary_bytes(kind: TopicKind, payload: bytes) -> None:
    check_decoded(kind, payload)


@pytest.mark.parametrize("kind", list(K))
@fuzz(40)
@given(value=json_values)
def test_decode_never_raises_on_arbitrary_json(kind: TopicKind, value: Any) -> None:
    check_decoded(kind, orjson.dumps(value))
    if isinstance(value, dict):
        check_decoded(kind, orjson.dumps({**value, "v": 1}))


@pytest.mark.parametrize("kind", list(K))
@fuzz(25)
@given(data=st.data())
def test_decode_never_raises_on_mutated_examples(kind: TopicKind, data: st.DataObject) -> None:
    paths = [path for path, _ in _paths(EXAMPLES[kind])]
    path = data.draw(st.sampled_from(paths))
    value = data.draw(json_values)
    check_decoded(kind, orjson.dumps(with_value(kind, path, value)))
    extra = data.draw(st.dictionaries(st.text(max_size=12), json_values, max_size=3))
    check_decoded(kind, orjson.dumps({**extra, **EXAMPLES[kind]}))


@pytest.mark.parametrize("kind", list(K))
@fuzz(20)
@given(payload=st.text(max_size=200))
def test_decode_never_raises_on_arbitrary_text(kind: TopicKind, payload: str) -> None:
    check_decoded(kind, payload)
