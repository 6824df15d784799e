"""Home Assistant discovery payloads (gateway/hass.py): pure, no broker, no files.

The rules checked here are those of reference/devices-and-apis.md, section 3:
topic shape, abbreviations, availability, unique ids, entity semantics, and
the device-based form's ``dev``/``o``/``cmps``/``p``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.config import HomeAssistantSettings, LoadSettings, SiteSettings
from gateway.hass import (
    MIGRATE_PAYLOAD,
    HassDiscovery,
    MemoryLedger,
    build_context,
    encode_config,
    parse_mode,
    unique_ids_of,
)
from protocol import Alloc, LoadState, SiteContext, SiteStatus, Topics

# HA's discovery topic matcher (homeassistant/components/mqtt/discovery.py).
TOPIC_RE = re.compile(
    r"^homeassistant/(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?"
    r"(?P<object_id>[a-zA-Z0-9_-]+)/config$"
)
# Abbreviations from the reference, and the full names we use where HA has none.
ENTITY_KEYS = {
    "cmd_t", "stat_t", "val_tpl", "cmd_tpl", "avty", "avty_t", "avty_mode", "avty_tpl",
    "pl_avail", "pl_not_avail", "pl_on", "pl_off", "stat_on", "stat_off", "uniq_id",
    "obj_id", "dev_cla", "stat_cla", "unit_of_meas", "ent_cat", "exp_aft", "frc_upd", "ops",
    "json_attr_t", "sug_dsp_prc", "ret", "opt", "en", "ic",
    "name", "qos", "default_entity_id", "dev", "o",
}
DEVICE_KEYS = {"ids", "cns", "name", "mf", "mdl", "mdl_id", "sw", "hw", "sn", "sa", "cu",
               "via_device"}
ORIGIN_KEYS = {"name", "sw", "url"}
SHARED_KEYS = {"dev", "o", "avty_t", "avty_tpl", "avty", "avty_mode", "qos", "cmps",
               "cmd_t", "stat_t", "e"}

COMMUNITY, SITE = "c1", "home1"


def loads(*ids: str) -> list[LoadSettings]:
    kinds = ["water_heater", "heat_pump", "ev_charger", "battery", "generic"]
    return [
        LoadSettings(id=i, name=f"Load {i}", kind=kinds[n % len(kinds)], device="plug",  # type: ignore[arg-type]
                     nominal_kw=2.0)
        for n, i in enumerate(ids)
    ]


class Recorder:
    """Stands in for the bus's publish."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int, bool]] = []

    def __call__(self, topic: str, payload: bytes | str, qos: int = 1,
                 retain: bool = False) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self.sent.append((topic, data, qos, retain))

    def topics(self) -> list[str]:
        return [t for t, *_ in self.sent]


def make(
    load_ids: tuple[str, ...] = ("boiler", "ev"),
    *,
    form: str = "entity",
    enabled: bool = True,
    prefix: str = "homeassistant",
    ledger: MemoryLedger | None = None,
    publish: Recorder | None = None,
) -> HassDiscovery:
    return HassDiscovery(
        Topics(COMMUNITY),
        HomeAssistantSettings(enabled=enabled, discovery_prefix=prefix),
        SiteSettings(id=SITE, name="Maison"),
        loads(*load_ids),
        publish if publish is not None else Recorder(),
        "0.1.0",
        form=form,
        ledger=ledger,
    )


def entity_configs() -> list[tuple[str, dict[str, Any]]]:
    return make().configs()


def field_of(template: str) -> str:
    match = re.search(r"value_json\.([a-z_]+)", template)
    assert match, template
    return match.group(1)


# The per-entity form ----------------------------------------------------------------------


def test_every_entity_config_has_the_required_keys() -> None:
    configs = entity_configs()
    # gateway: 6 entities; each load: switch, mode, power, energy, reason
    assert len(configs) == 6 + 2 * 5
    for topic, payload in configs:
        match = TOPIC_RE.fullmatch(topic)
        assert match, topic
        assert match["object_id"] == payload["uniq_id"]
        platform = match["component"]
        assert platform in {"switch", "select", "sensor", "binary_sensor"}
        for key in ("uniq_id", "obj_id", "stat_t", "avty_t", "avty_tpl", "dev", "o", "qos"):
            assert key in payload, (topic, key)
        assert payload["default_entity_id"] == f"{platform}.{payload['uniq_id']}"
        assert payload["o"]["name"] == "ems-gateway"
        assert payload["dev"]["ids"] and "name" in payload["dev"]
        if platform in {"switch", "select"}:
            assert "cmd_t" in payload
        assert "name" in payload


def test_unique_ids_are_unique_stable_and_follow_the_scheme() -> None:
    first = [p["uniq_id"] for _, p in entity_configs()]
    assert len(set(first)) == len(first)
    assert first == [p["uniq_id"] for _, p in entity_configs()]
    assert "ems_c1_home1_boiler_switch" in first
    assert "ems_c1_home1_ev_energy" in first
    assert "ems_c1_home1_net_export" in first
    for uid in first:
        assert uid.startswith(f"ems_{COMMUNITY}_{SITE}_")


@pytest.mark.parametrize("load_id", ["net", "grid", "allocation", "coordinator", "export"])
def test_load_ids_cannot_collide_with_the_gateway_entities(load_id: str) -> None:
    uids = [p["uniq_id"] for _, p in make((load_id, "boiler")).configs()]
    assert len(set(uids)) == len(uids)


def test_availability_state_and_command_topics_are_our_contract_topics() -> None:
    t = Topics(COMMUNITY)
    allowed_state = {t.site_context(SITE)} | {
        topic for ld in ("boiler", "ev")
        for topic in (t.load_state(SITE, ld), t.load_mode(SITE, ld))
    }
    for _, payload in entity_configs():
        assert payload["avty_t"] == t.site_status(SITE)
        assert "avty" not in payload  # never both forms of availability
        assert payload["stat_t"] in allowed_state
        if "cmd_t" in payload:
            load = payload["dev"]["ids"][0].removeprefix(f"ems_{COMMUNITY}_{SITE}_")
            assert payload["cmd_t"] == t.load_mode_set(SITE, load)
            assert t.parse(payload["cmd_t"]) is None  # not something the coordinator reads


def test_templates_read_fields_our_payloads_have() -> None:
    # energy_kwh: the proposed optional field of load/{l}/state (the template
    # tolerates its absence).
    fields = {
        "state": set(LoadState.model_fields) | {"energy_kwh"},
        "context": set(SiteContext.model_fields),
    }
    for _, payload in entity_configs():
        assert field_of(payload["avty_tpl"]) in SiteStatus.model_fields
        if "val_tpl" in payload:
            leaf = payload["stat_t"].rsplit("/", 1)[-1]
            assert field_of(payload["val_tpl"]) in fields[leaf], payload["val_tpl"]


def test_select_options_are_the_modes_and_the_switch_maps_to_forcing() -> None:
    by_platform: dict[str, dict[str, Any]] = {}
    for topic, payload in entity_configs():
        by_platform.setdefault(TOPIC_RE.fullmatch(topic)["component"], payload)  # type: ignore[index]
    select = by_platform["select"]
    assert select["ops"] == ["auto", "force_on", "force_off"]
    assert [parse_mode(o) for o in select["ops"]] == select["ops"]
    switch = by_platform["switch"]
    assert switch["name"] is None  # the load's main feature
    assert parse_mode(switch["pl_on"]) == "force_on"
    assert parse_mode(switch["pl_off"]) == "force_off"
    assert switch["val_tpl"] == "{{ 'ON' if value_json.on else 'OFF' }}"


def test_units_and_device_classes() -> None:
    seen = {}
    for _, payload in entity_configs():
        seen[payload["uniq_id"].removeprefix(f"ems_{COMMUNITY}_{SITE}_")] = payload
    for key in ("boiler_power", "net_export", "allocation"):
        p = seen[key]
        assert (p["dev_cla"], p["stat_cla"], p["unit_of_meas"]) == ("power", "measurement", "kW")
    energy = seen["boiler_energy"]
    assert (energy["dev_cla"], energy["stat_cla"], energy["unit_of_meas"]) == (
        "energy", "total_increasing", "kWh")
    assert seen["coordinator"]["dev_cla"] == "connectivity"
    assert seen["degraded"]["dev_cla"] == "problem"
    assert seen["boiler_reason"]["ops"] == ["allocation", "shed", "local", "manual", "idle"]
    assert "unit_of_meas" not in seen["rank"] and "unit_of_meas" not in seen["grid_level"]


def test_payloads_are_valid_json_under_has_rules() -> None:
    for form in ("entity", "device"):
        for _, payload in make(form=form).configs():
            raw = encode_config(payload)
            assert len(raw) < 16 * 1024
            assert json.loads(raw) == payload
            components = payload.get("cmps", {"": payload}).values()
            for comp in components:
                keys = set(comp) - {"p"}
                assert keys <= ENTITY_KEYS | SHARED_KEYS, keys - ENTITY_KEYS - SHARED_KEYS
                assert "~" not in comp
                assert "unique_id" not in comp and "object_id" not in comp  # no mixed forms
            assert set(payload["dev"]) <= DEVICE_KEYS
            assert set(payload["o"]) <= ORIGIN_KEYS and payload["o"]["name"]


def test_device_ids_group_entities_and_loads_hang_off_the_gateway() -> None:
    devices: dict[str, dict[str, Any]] = {}
    for _, payload in entity_configs():
        ident = payload["dev"]["ids"][0]
        assert devices.setdefault(ident, payload["dev"]) == payload["dev"]
    assert set(devices) == {"ems_c1_home1", "ems_c1_home1_boiler", "ems_c1_home1_ev"}
    assert devices["ems_c1_home1"]["name"] == "Maison"
    assert devices["ems_c1_home1_boiler"]["via_device"] == "ems_c1_home1"
    assert devices["ems_c1_home1_boiler"]["mdl"] == "Water heater"


# The device-based form --------------------------------------------------------------------


def test_device_form_has_dev_origin_and_components_with_platforms() -> None:
    configs = make(form="device").configs()
    assert [t for t, _ in configs] == [
        "homeassistant/device/ems_c1_home1/config",
        "homeassistant/device/ems_c1_home1_boiler/config",
        "homeassistant/device/ems_c1_home1_ev/config",
    ]
    for topic, payload in configs:
        assert TOPIC_RE.fullmatch(topic)
        assert payload["dev"]["ids"] and payload["o"]["name"]
        assert payload["avty_t"] == Topics(COMMUNITY).site_status(SITE)
        assert payload["cmps"]
        for key, comp in payload["cmps"].items():
            assert re.fullmatch(r"[a-zA-Z0-9_-]+", key)
            assert comp["p"] in {"switch", "select", "sensor", "binary_sensor"}
            assert comp["uniq_id"]
            assert "dev" not in comp and "o" not in comp


def test_both_forms_declare_the_same_entities() -> None:
    entity_uids = sorted(u for _, p in make().configs() for u in unique_ids_of(p))
    device_uids = sorted(u for _, p in make(form="device").configs() for u in unique_ids_of(p))
    assert entity_uids == device_uids


def test_bad_form_or_prefix_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match="discovery must be one of"):
        make(form="devices")
    with pytest.raises(ValueError, match="discovery_prefix"):
        make(prefix="ha/#")
    custom = make(prefix="ha/disco")
    assert custom.status_topic == "ha/disco/status"
    assert all(t.startswith("ha/disco/") for t, _ in custom.configs())


# Announce, removal, migration -------------------------------------------------------------


def test_announce_publishes_retained_configs_and_remembers_them() -> None:
    rec, ledger = Recorder(), MemoryLedger()
    hass = make(ledger=ledger, publish=rec)
    hass.announce()
    assert [(t, json.loads(p)) for t, p, _, _ in rec.sent] == [
        (t, p) for t, p in hass.configs()
    ]
    assert all(qos == 1 and retain for _, _, qos, retain in rec.sent)
    assert set(ledger.announced) == {t for t, _ in hass.configs()}


def test_a_removed_load_gets_empty_retained_configs() -> None:
    ledger = MemoryLedger()
    make(("boiler", "ev"), ledger=ledger).announce()
    rec = Recorder()
    make(("boiler",), ledger=ledger, publish=rec).announce()
    empties = [t for t, p, _, retain in rec.sent if p == b"" and retain]
    assert sorted(empties) == sorted(
        f"homeassistant/{platform}/ems_c1_home1_ev_{key}/config"
        for platform, key in [("switch", "switch"), ("select", "mode"), ("sensor", "power"),
                              ("sensor", "energy"), ("sensor", "reason")]
    )
    assert MIGRATE_PAYLOAD not in [p for _, p, _, _ in rec.sent]
    assert not any("_ev_" in t for t in ledger.announced)


def test_switching_form_migrates_then_announces_then_clears() -> None:
    ledger = MemoryLedger()
    make(ledger=ledger).announce()
    old = set(ledger.announced)
    rec = Recorder()
    make(form="device", ledger=ledger, publish=rec).announce()
    kinds = ["migrate" if p == MIGRATE_PAYLOAD else "clear" if p == b"" else "config"
             for _, p, _, _ in rec.sent]
    n = len(old)
    assert kinds == ["migrate"] * n + ["config"] * 3 + ["clear"] * n
    assert {t for t, *_ in rec.sent[:n]} == old
    assert not any(retain for _, _, _, retain in rec.sent[:n])  # migrate is a command
    assert all(t.startswith("homeassistant/device/") for t in ledger.announced)


def test_disabled_removes_what_was_announced_and_stays_quiet() -> None:
    ledger = MemoryLedger()
    make(ledger=ledger).announce()
    rec = Recorder()
    hass = make(enabled=False, ledger=ledger, publish=rec)
    subscribed: list[str] = []
    hass.attach(lambda topic, handler: subscribed.append(topic), lambda load, mode: None)
    hass.announce()
    assert subscribed == []
    assert rec.sent and all(p == b"" and retain for _, p, _, retain in rec.sent)
    assert ledger.announced == {}
    rec.sent.clear()
    hass.publish_mode("boiler", "auto")
    hass.publish_context(SiteContext(), 0.0)
    assert rec.sent == []


def test_retract_clears_everything_announced() -> None:
    ledger, rec = MemoryLedger(), Recorder()
    hass = make(ledger=ledger, publish=rec)
    hass.announce()
    rec.sent.clear()
    hass.retract()
    assert sorted(rec.topics()) == sorted(t for t, _ in hass.configs())
    assert ledger.announced == {}


def test_birth_message_reannounces_and_other_statuses_do_not() -> None:
    rec = Recorder()
    hass = make(publish=rec)
    assert hass.handle_status(b"offline") is False
    assert rec.sent == []
    assert hass.handle_status(b"online") is True
    assert len(rec.sent) == len(hass.configs())


def test_attach_subscribes_to_birth_and_each_loads_mode_set() -> None:
    hass = make()
    handlers: dict[str, Any] = {}
    got: list[tuple[str, str]] = []
    hass.attach(handlers.__setitem__, lambda load, mode: got.append((load, mode)))
    t = Topics(COMMUNITY)
    assert set(handlers) == {"homeassistant/status", t.load_mode_set(SITE, "boiler"),
                             t.load_mode_set(SITE, "ev")}
    handlers[t.load_mode_set(SITE, "ev")](t.load_mode_set(SITE, "ev"), b"ON")
    handlers[t.load_mode_set(SITE, "ev")](t.load_mode_set(SITE, "ev"), b"nonsense")
    handlers[t.load_mode_set(SITE, "boiler")](t.load_mode_set(SITE, "boiler"), b"auto")
    assert got == [("ev", "force_on"), ("boiler", "auto")]


def test_a_failing_callback_is_logged_not_raised() -> None:
    hass = make()
    handlers: dict[str, Any] = {}

    def boom(load: str, mode: str) -> None:
        raise RuntimeError("ems exploded")

    hass.attach(handlers.__setitem__, boom)
    topic = Topics(COMMUNITY).load_mode_set(SITE, "boiler")
    with capture_logs() as logs:
        handlers[topic](topic, b"OFF")
    assert [e["event"] for e in logs][-1] == "hass_handler_failed"
    assert logs[-1]["topic"] == topic


# Commands -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "mode"), [
    (b"auto", "auto"), (b"force_on", "force_on"), (b"force_off", "force_off"),
    (b"ON", "force_on"), (b"OFF", "force_off"), (b"on", "force_on"), (" auto\n", "auto"),
])
def test_parse_mode_accepts_modes_and_switch_payloads(payload: bytes | str, mode: str) -> None:
    assert parse_mode(payload) == mode


@pytest.mark.parametrize("payload", [
    b"", b"forceon", b"force on", b'"auto"', b"\xff\xfe", b"ON OFF", b"auto" * 20, b"1",
])
def test_parse_mode_rejects_anything_else(payload: bytes) -> None:
    assert parse_mode(payload) is None


@given(st.binary(max_size=200))
def test_parse_mode_never_raises(payload: bytes) -> None:
    assert parse_mode(payload) in (None, "auto", "force_on", "force_off")


def test_handle_mode_set_logs_and_counts_rejections() -> None:
    hass = make()
    with capture_logs() as logs:
        assert hass.handle_mode_set("boiler", b"turbo") is None
        assert hass.handle_mode_set("unknown", b"auto") is None
        assert hass.handle_mode_set("boiler", b"OFF") == "force_off"
    assert hass.rejected == 2
    assert [e["event"] for e in logs] == ["hass_command_rejected"] * 2
    assert logs[0]["load"] == "boiler" and logs[0]["excerpt"] == "turbo"


# State publications ----------------------------------------------------------------------


def test_modes_are_published_retained_once_per_change() -> None:
    rec = Recorder()
    hass = make(publish=rec)
    mode_topic = Topics(COMMUNITY).load_mode(SITE, "boiler")
    hass.publish_mode("boiler", "auto")
    hass.publish_mode("boiler", "auto")
    hass.publish_mode("boiler", "force_on")
    assert rec.sent == [(mode_topic, b"auto", 1, True), (mode_topic, b"force_on", 1, True)]
    rec.sent.clear()
    hass.announce()  # e.g. after a reconnect: states go out again
    rec.sent.clear()
    hass.publish_mode("boiler", "force_on")
    assert rec.sent == [(mode_topic, b"force_on", 1, True)]


def test_context_is_throttled_for_net_export_only() -> None:
    rec = Recorder()
    hass = make(publish=rec)

    def ctx(net: float, degraded: bool = True) -> SiteContext:
        return build_context(net_export_kw=net, alloc=None, alloc_kw=0.0, grid_level=1,
                             coordinator_online=True, degraded=degraded, max_site_kw=50.0)

    hass.publish_context(ctx(1.0), 0.0)
    hass.publish_context(ctx(1.5), 2.0)      # net only, too soon
    hass.publish_context(ctx(1.5, False), 3.0)  # degraded changed: at once
    hass.publish_context(ctx(1.5, False), 5.0)  # nothing changed
    hass.publish_context(ctx(2.0, False), 14.0)  # net only, interval passed
    assert rec.topics() == [Topics(COMMUNITY).site_context(SITE)] * 3
    last = json.loads(rec.sent[-1][1])
    assert last["net_export_kw"] == 2.0 and last["degraded"] is False and last["v"] == 1
    assert all(retain for *_, retain in rec.sent)


def test_build_context_clamps_and_reads_the_allocation_in_force() -> None:
    cycle = datetime(2026, 6, 21, 12, 15, tzinfo=UTC)
    alloc = Alloc(cycle=cycle, alloc_kw=3.0, rank=2,
                  valid_until=datetime(2026, 6, 21, 12, 30, tzinfo=UTC), epoch=1)
    ctx = build_context(net_export_kw=-80.0, alloc=alloc, alloc_kw=3.0, grid_level=7,
                        coordinator_online=True, degraded=False, max_site_kw=60.0)
    assert (ctx.net_export_kw, ctx.alloc_kw, ctx.rank, ctx.grid_level) == (-60.0, 3.0, 2, 3)
    assert ctx.cycle == cycle
    idle = build_context(net_export_kw=float("nan"), alloc=None, alloc_kw=0, grid_level=0,
                         coordinator_online=False, degraded=True, max_site_kw=50.0)
    assert (idle.net_export_kw, idle.cycle, idle.rank) == (None, None, 0)
