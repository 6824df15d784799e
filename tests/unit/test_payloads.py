"""Payload models and the codec, one behaviour at a time (PROTOCOL.md, Conventions).

The parametrised sweep over every kind lives in tests/contract/test_payload_contract.py;
these are the exact examples and the edges of individual models.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta, timezone

import orjson
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    DEFAULT_LIMITS,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    Ack,
    AdminSignalSet,
    Alloc,
    CycleClosed,
    Flex,
    GridShed,
    Limits,
    LoadFlex,
    LoadState,
    NetLoad,
    Rejection,
    Route,
    SiteStatus,
    TopicKind,
    Topics,
    decode,
    decode_payload,
    encode,
    format_utc,
)

CYCLE_AT = datetime(2026, 6, 21, 12, 15, tzinfo=UTC)
FLEX_ROUTE = Route(TopicKind.FLEX, site="s1")


def test_protocol_version_and_limits_defaults() -> None:
    assert PROTOCOL_VERSION == 1
    assert MAX_PAYLOAD_BYTES == 16 * 1024
    assert DEFAULT_LIMITS.max_site_kw == 50.0
    assert DEFAULT_LIMITS.max_payload_bytes == MAX_PAYLOAD_BYTES


@pytest.mark.parametrize("cap", [0, -1, 1e6, math.nan, math.inf])
def test_limits_refuse_an_absurd_cap(cap: float) -> None:
    with pytest.raises(ValueError, match="max_site_kw"):
        Limits(max_site_kw=cap)


# format_utc and encode ------------------------------------------------------


def test_format_utc_writes_z_and_drops_zero_fraction() -> None:
    assert format_utc(CYCLE_AT) == "2026-06-21T12:15:00Z"
    assert format_utc(CYCLE_AT.replace(microsecond=250_000)) == "2026-06-21T12:15:00.250000Z"


def test_format_utc_converts_other_offsets_to_utc() -> None:
    paris = timezone(timedelta(hours=2))
    assert format_utc(datetime(2026, 6, 21, 14, 15, tzinfo=paris)) == "2026-06-21T12:15:00Z"


def test_encode_is_compact_utf8_json_with_z_times() -> None:
    wire = encode(Flex(cycle=CYCLE_AT, flex_kw=3.5))
    assert wire == b'{"v":1,"cycle":"2026-06-21T12:15:00Z","flex_kw":3.5,"loads":[]}'


def test_encode_keeps_microseconds_and_round_trips() -> None:
    message = Flex(cycle=CYCLE_AT.replace(microsecond=123_456), flex_kw=1.0)
    wire = encode(message)
    assert b'"2026-06-21T12:15:00.123456Z"' in wire
    assert decode(FLEX_ROUTE, wire) == message


def test_encode_writes_the_from_alias_of_grid_shed() -> None:
    shed = GridShed.model_validate(
        {"level": 3, "from": CYCLE_AT, "until": CYCLE_AT + timedelta(hours=2), "reason": "manual"}
    )
    assert shed.from_ == CYCLE_AT
    data = orjson.loads(encode(shed))
    assert data["from"] == "2026-06-21T12:15:00Z"
    assert "from_" not in data
    assert decode(Route(TopicKind.GRID_SHED), encode(shed)) == shed


def test_non_ascii_text_survives_encoding() -> None:
    status = SiteStatus(state="online", version="gateway-é-1.0")
    route = Topics("c1").parse(Topics("c1").site_status("s1"))
    assert route is not None
    assert decode(route, encode(status)) == status
    assert "é".encode() in encode(status)


@settings(max_examples=200, deadline=None)
@given(
    at=st.datetimes(
        min_value=datetime(1, 1, 1),
        max_value=datetime(9999, 12, 31, 23, 59, 59),
        timezones=st.just(UTC),
    ),
    flex_kw=st.floats(min_value=0, max_value=50),
)
def test_any_utc_time_and_power_round_trip(at: datetime, flex_kw: float) -> None:
    message = Flex(cycle=at, flex_kw=flex_kw)
    decoded = decode(FLEX_ROUTE, encode(message))
    assert decoded == message
    assert orjson.loads(encode(message))["cycle"].endswith("Z")


def test_a_decoded_early_year_re_encodes_to_a_decodable_time() -> None:
    # strftime("%Y") does not zero-pad years < 1000 on Linux; the wire must.
    message = decode(FLEX_ROUTE, b'{"v":1,"cycle":"0999-01-01T00:00:00Z","flex_kw":1}')
    assert isinstance(message, Flex)
    assert b'"0999-01-01T00:00:00Z"' in encode(message)
    assert decode(FLEX_ROUTE, encode(message)) == message


# Models built in Python -------------------------------------------------------


def test_models_are_frozen() -> None:
    flex = Flex(cycle=CYCLE_AT, flex_kw=1.0)
    with pytest.raises(pydantic.ValidationError):
        flex.flex_kw = 2.0


def test_models_refuse_naive_and_non_utc_times_in_python_too() -> None:
    with pytest.raises(pydantic.ValidationError, match="offset"):
        Flex(cycle=datetime(2026, 6, 21, 12, 15), flex_kw=1.0)
    with pytest.raises(pydantic.ValidationError, match="UTC"):
        Flex(cycle=datetime(2026, 6, 21, 14, 15, tzinfo=timezone(timedelta(hours=2))), flex_kw=1.0)


def test_models_refuse_nan_and_negative_power_in_python_too() -> None:
    with pytest.raises(pydantic.ValidationError):
        Flex(cycle=CYCLE_AT, flex_kw=math.nan)
    with pytest.raises(pydantic.ValidationError):
        Alloc(cycle=CYCLE_AT, alloc_kw=-1.0, rank=1, valid_until=CYCLE_AT, epoch=0)


def test_load_flex_min_above_max_names_the_load() -> None:
    with pytest.raises(pydantic.ValidationError, match="wh"):
        LoadFlex(id="wh", min_kw=3.0, max_kw=2.0)
    assert LoadFlex(id="wh", min_kw=2.0, max_kw=2.0).kind == "generic"


def test_defaults() -> None:
    status = SiteStatus(state="offline")
    assert (status.v, status.version, status.loads) == (1, "unknown", ())
    assert Flex(cycle=CYCLE_AT, flex_kw=0.0).loads == ()


# decode: exact examples ---------------------------------------------------------


def test_flex_reply_decodes_with_its_loads() -> None:
    wire = (
        b'{"v":1,"cycle":"2026-06-21T12:15:00Z","flex_kw":4.5,"loads":['
        b'{"id":"wh","kind":"water_heater","min_kw":2,"max_kw":2.5,"until":"2026-06-21T18:00:00Z"}]}'
    )
    flex = decode(FLEX_ROUTE, wire)
    assert isinstance(flex, Flex)
    assert flex.cycle == CYCLE_AT
    assert flex.cycle.tzinfo is not None and flex.cycle.utcoffset() == timedelta(0)
    assert flex.flex_kw == 4.5
    (load,) = flex.loads
    assert (load.id, load.kind, load.min_kw, load.max_kw) == ("wh", "water_heater", 2.0, 2.5)
    assert load.until == datetime(2026, 6, 21, 18, tzinfo=UTC)
    assert load.priority is None and load.energy_kwh is None


def test_zero_flex_is_a_valid_reply() -> None:
    # PROTOCOL.md: 0 when the site can absorb nothing; it still replies.
    flex = decode(FLEX_ROUTE, b'{"v":1,"cycle":"2026-06-21T12:15:00Z","flex_kw":0}')
    assert isinstance(flex, Flex) and flex.flex_kw == 0.0


def test_str_payload_is_accepted_like_bytes() -> None:
    text = '{"v":1,"cycle":"2026-06-21T12:15:00Z","flex_kw":1.5}'
    assert decode(FLEX_ROUTE, text) == decode(FLEX_ROUTE, text.encode())


def test_admin_level_null_clears_and_is_required() -> None:
    route = Route(TopicKind.ADMIN_SIGNAL_SET)
    cleared = decode(route, b'{"v":1,"day":"2026-01-15","hour":8,"level":null}')
    assert isinstance(cleared, AdminSignalSet)
    assert cleared.level is None and cleared.day == date(2026, 1, 15)
    missing = decode(route, b'{"v":1,"day":"2026-01-15","hour":8}')
    assert isinstance(missing, Rejection) and missing.reason == "invalid"
    assert "level" in missing.detail


def test_cycle_closed_may_carry_a_negative_surplus() -> None:
    # no_surplus: S <= 0 is reported as is (DOMAIN.md reference case 0: S = -7 kW).
    closed = CycleClosed(
        cycle=CYCLE_AT, reason="no_surplus", surplus_kw=-7.0, allocated_kw=0.0, replies=0, sites=5
    )
    decoded = decode(Route(TopicKind.CYCLE_CLOSED), encode(closed))
    assert decoded == closed


def test_load_state_rejects_a_number_for_on() -> None:
    route = Route(TopicKind.LOAD_STATE, site="s1", load="wh")
    ok = decode(route, b'{"v":1,"on":false,"power_kw":0,"reason":"idle"}')
    assert isinstance(ok, LoadState) and ok.on is False
    bad = decode(route, b'{"v":1,"on":0,"power_kw":0,"reason":"idle"}')
    assert isinstance(bad, Rejection) and "on" in bad.detail


def test_netload_keeps_its_sign() -> None:
    route = Route(TopicKind.NETLOAD, site="s1")
    drawing = decode(route, b'{"v":1,"ts":"2026-06-21T12:14:00Z","net_export_kw":-4.2}')
    assert isinstance(drawing, NetLoad) and drawing.net_export_kw == -4.2


def test_rejection_carries_route_reason_and_detail() -> None:
    rejection = decode(Route(TopicKind.ACK, site="s7"), b'{"v":2,"seq":1}')
    assert rejection == Rejection("bad_version", "v=2, expected 1", TopicKind.ACK, "s7")


def test_decode_payload_without_a_site_skips_the_site_check() -> None:
    result = decode_payload(Ack, b'{"v":1,"seq":3,"site":"anything"}')
    assert result == Ack(seq=3)
    mismatch = decode_payload(Ack, b'{"v":1,"seq":3,"site":"s2"}', site="s1")
    assert isinstance(mismatch, Rejection) and mismatch.reason == "site_mismatch"


def test_limits_max_payload_bytes_is_configurable() -> None:
    wire = b'{"v":1,"seq":3}'
    tight = Limits(max_payload_bytes=len(wire) - 1)
    rejection = decode(Route(TopicKind.ACK, site="s1"), wire, tight)
    assert isinstance(rejection, Rejection) and rejection.reason == "oversized"
    exact = Limits(max_payload_bytes=len(wire))
    assert decode(Route(TopicKind.ACK, site="s1"), wire, exact) == Ack(seq=3)


def test_validation_detail_is_short_and_counts_the_rest() -> None:
    wire = orjson.dumps(
        {"v": 1, "seq": "x", "period": 1, "import_kwh": "a", "export_kwh": "b", "used_kwh": "c"}
    )
    rejection = decode(Route(TopicKind.REPORT, site="s1"), wire)
    assert isinstance(rejection, Rejection) and rejection.reason == "invalid"
    assert "more)" in rejection.detail
    assert len(rejection.detail) < 400


def test_rejection_excerpt_is_short_and_never_raises() -> None:
    rejection = Rejection("malformed_json", "x")
    assert rejection.excerpt(b"\xff" * 500, size=10) == "\ufffd" * 10
    assert rejection.excerpt(b'{"v":1}') == '{"v":1}'
