"""Home Assistant MQTT discovery for one gateway (reference/devices-and-apis.md, section 3).

One device for the home (the gateway) and one per load. Every entity reads our
own retained contract topics (docs/protocol.md), so Home Assistant needs nothing
the coordinator does not already get:

- per load: a switch (``ON`` -> ``force_on``, ``OFF`` -> ``force_off``), a mode
  select, power, energy and the reason it is on or off, from ``load/{l}/state``
  and ``load/{l}/mode``; commands go to ``load/{l}/mode/set``;
- for the home: net export, this cycle's allocation and rank, grid level,
  coordinator connectivity and degraded mode, from ``site/{s}/context``;
- availability for all: ``site/{s}/status`` (JSON, ``state`` online/offline).

Two discovery forms (``discovery = "entity" | "device"``). Per-entity configs,
each carrying the same ``dev`` block, work on every Home Assistant version and
are the default; the device-based form (``<prefix>/device/<id>/config`` with
``cmps``) needs 2024.11+ and older versions ignore it (checked with a real
Home Assistant, see the reference). Configs are retained and re-published
when Home Assistant's birth message (``<prefix>/status`` = ``online``) arrives.

What was announced is kept in a small ledger (a JSON file in the state dir):
a config topic that is no longer produced (a load removed from the config, the
form or the prefix changed) gets an empty retained payload, which removes it
from Home Assistant and from the broker. When the same unique ids move to
another form, ``{"migrate_discovery": true}`` goes to the old topics first so
Home Assistant keeps the entities (and their history) instead of refusing the
new config as a duplicate.

The builders (``build_devices``, ``entity_configs``, ``device_configs``,
``parse_mode``, ``build_context``) are pure; ``HassDiscovery`` is the thin
shell that publishes through the gateway's bus.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import structlog

from gateway.ems.loads import Mode
from protocol import Alloc, SiteContext, Topics, encode

log = structlog.get_logger("gateway.hass")

DiscoveryForm = Literal["entity", "device"]
DISCOVERY_FORMS: tuple[str, ...] = get_args(DiscoveryForm)
MODES: tuple[Mode, ...] = get_args(Mode)
REASONS = ("allocation", "shed", "local", "manual", "idle")
ORIGIN_NAME = "ems-gateway"
MANUFACTURER = "EMS community"
# HA's discovery topic ids: ``[a-zA-Z0-9_-]`` (its TOPIC_MATCHER); our ids fit.
MIGRATE_PAYLOAD = b'{"migrate_discovery":true}'
MAX_COMMAND_BYTES = 64

KIND_LABELS = {
    "water_heater": ("Water heater", "mdi:water-boiler"),
    "heat_pump": ("Heat pump", "mdi:heat-pump"),
    "ev_charger": ("EV charger", "mdi:ev-station"),
    "battery": ("Battery", "mdi:home-battery"),
    "generic": ("Flexible load", "mdi:power-socket-eu"),
}

# Switch commands and the select's options, as the resident's tools may type them.
_COMMANDS: dict[str, Mode] = {
    "auto": "auto",
    "force_on": "force_on",
    "force_off": "force_off",
    "on": "force_on",
    "off": "force_off",
}

Handler = Callable[[str, bytes], None]
Subscribe = Callable[[str, Handler], None]
OnMode = Callable[[str, Mode], None]


class Publish(Protocol):
    """The bus's publish (``PahoBus.publish``): queue it, never block."""

    def __call__(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False
    ) -> None: ...


class SiteLike(Protocol):
    """What we read of ``SiteSettings``."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str | None: ...


class LoadLike(Protocol):
    """What we read of ``LoadSettings``."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str | None: ...

    @property
    def kind(self) -> str: ...


class HassSettingsLike(Protocol):
    """What we read of ``HomeAssistantSettings``."""

    @property
    def enabled(self) -> bool: ...

    @property
    def discovery_prefix(self) -> str: ...


# Pure builders ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entity:
    """One Home Assistant entity: its platform, its key within its device, its options.

    ``options`` are HA's abbreviated keys, without device, origin or availability.
    """

    platform: str
    key: str
    unique_id: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Device:
    """One Home Assistant device: its id (also its discovery object id) and entities."""

    object_id: str
    block: dict[str, Any]
    entities: tuple[Entity, ...]


def device_id(community: str, site: str, load: str | None = None) -> str:
    """``ems_<community>_<site>`` for the gateway, ``ems_<c>_<s>_<load>`` for a load."""
    base = f"ems_{community}_{site}"
    return base if load is None else f"{base}_{load}"


def load_entities(topics: Topics, site: str, load: LoadLike) -> tuple[Entity, ...]:
    """The switch, mode select, power, energy and reason of one load."""
    uid = device_id(topics.community, site, load.id)
    state = topics.load_state(site, load.id)
    mode_set = topics.load_mode_set(site, load.id)
    icon = KIND_LABELS.get(load.kind, KIND_LABELS["generic"])[1]
    return (
        # name null: the switch is the device's main feature and takes its name.
        Entity("switch", "switch", f"{uid}_switch", {
            "name": None, "ic": icon, "cmd_t": mode_set, "pl_on": "ON", "pl_off": "OFF",
            "stat_t": state, "val_tpl": "{{ 'ON' if value_json.on else 'OFF' }}",
        }),
        Entity("select", "mode", f"{uid}_mode", {
            "name": "Mode", "ic": "mdi:tune-variant", "ops": list(MODES),
            "cmd_t": mode_set, "stat_t": topics.load_mode(site, load.id),
        }),
        Entity("sensor", "power", f"{uid}_power", {
            "name": "Power", "stat_t": state, "val_tpl": "{{ value_json.power_kw }}",
            "dev_cla": "power", "stat_cla": "measurement", "unit_of_meas": "kW",
            "sug_dsp_prc": 2,
        }),
        # energy_kwh is optional in load/{l}/state (a relay without a meter has
        # none): an empty rendering is ignored by HA's numeric sensors, so the
        # last reading stays instead of a drop that total_increasing would take
        # for a meter reset.
        Entity("sensor", "energy", f"{uid}_energy", {
            "name": "Energy", "stat_t": state,
            "val_tpl": "{{ value_json.energy_kwh if value_json.energy_kwh is defined"
                       " and value_json.energy_kwh is not none else '' }}",
            "dev_cla": "energy", "stat_cla": "total_increasing", "unit_of_meas": "kWh",
            "sug_dsp_prc": 2,
        }),
        Entity("sensor", "reason", f"{uid}_reason", {
            "name": "Reason", "ic": "mdi:help-circle-outline", "stat_t": state,
            "val_tpl": "{{ value_json.reason }}", "dev_cla": "enum", "ops": list(REASONS),
            "ent_cat": "diagnostic",
        }),
    )


def gateway_entities(topics: Topics, site: str) -> tuple[Entity, ...]:
    """The home's community context: net export, allocation, rank, grid, coordinator."""
    uid = device_id(topics.community, site)
    ctx = topics.site_context(site)
    return (
        Entity("sensor", "net_export", f"{uid}_net_export", {
            "name": "Net export", "ic": "mdi:transmission-tower-export", "stat_t": ctx,
            "val_tpl": "{{ value_json.net_export_kw }}", "dev_cla": "power",
            "stat_cla": "measurement", "unit_of_meas": "kW", "sug_dsp_prc": 2,
        }),
        Entity("sensor", "allocation", f"{uid}_allocation", {
            "name": "Allocation", "ic": "mdi:solar-power-variant", "stat_t": ctx,
            "val_tpl": "{{ value_json.alloc_kw }}", "dev_cla": "power",
            "stat_cla": "measurement", "unit_of_meas": "kW", "sug_dsp_prc": 2,
        }),
        Entity("sensor", "rank", f"{uid}_rank", {
            "name": "Allocation rank", "ic": "mdi:podium", "stat_t": ctx,
            "val_tpl": "{{ value_json.rank }}", "stat_cla": "measurement",
        }),
        Entity("sensor", "grid_level", f"{uid}_grid_level", {
            "name": "Grid level", "ic": "mdi:transmission-tower", "stat_t": ctx,
            "val_tpl": "{{ value_json.grid_level }}", "stat_cla": "measurement",
        }),
        Entity("binary_sensor", "coordinator", f"{uid}_coordinator", {
            "name": "Coordinator", "stat_t": ctx, "dev_cla": "connectivity",
            "val_tpl": "{{ 'ON' if value_json.coordinator_online else 'OFF' }}",
            "ent_cat": "diagnostic",
        }),
        Entity("binary_sensor", "degraded", f"{uid}_degraded", {
            "name": "Degraded mode", "stat_t": ctx, "dev_cla": "problem",
            "val_tpl": "{{ 'ON' if value_json.degraded else 'OFF' }}",
            "ent_cat": "diagnostic",
        }),
    )


def build_devices(
    topics: Topics, site: SiteLike, loads: Sequence[LoadLike], version: str
) -> list[Device]:
    """The gateway's device, then one device per load (via the gateway)."""
    gw_id = device_id(topics.community, site.id)
    gateway = Device(gw_id, {
        "ids": [gw_id], "name": site.name or f"EMS {site.id}", "mf": MANUFACTURER,
        "mdl": "Edge gateway", "sw": version,
    }, gateway_entities(topics, site.id))
    out = [gateway]
    for load in loads:
        dev_id = device_id(topics.community, site.id, load.id)
        model = KIND_LABELS.get(load.kind, KIND_LABELS["generic"])[0]
        out.append(Device(dev_id, {
            "ids": [dev_id], "name": load.name or load.id, "mf": MANUFACTURER, "mdl": model,
            "via_device": gw_id,
        }, load_entities(topics, site.id, load)))
    return out


def _availability(topics: Topics, site: str) -> dict[str, Any]:
    # Our status is JSON, so the template extracts the online/offline that HA's
    # default payload_available/payload_not_available expect.
    return {"avty_t": topics.site_status(site), "avty_tpl": "{{ value_json.state }}"}


def _entity_ids(entity: Entity) -> dict[str, Any]:
    # obj_id for HA < 2025.10; default_entity_id for 2025.10+, where obj_id is
    # deprecated (ignored from 2026.4). Older versions drop the unknown key.
    return {
        "uniq_id": entity.unique_id,
        "obj_id": entity.unique_id,
        "default_entity_id": f"{entity.platform}.{entity.unique_id}",
    }


def entity_configs(
    prefix: str, devices: Sequence[Device], availability: dict[str, Any], origin: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """Per-entity discovery: ``<prefix>/<platform>/<unique_id>/config``, one per entity."""
    out = []
    for device in devices:
        for entity in device.entities:
            payload = {**entity.options, **_entity_ids(entity), **availability, "qos": 1,
                       "dev": device.block, "o": origin}
            out.append((f"{prefix}/{entity.platform}/{entity.unique_id}/config", payload))
    return out


def device_configs(
    prefix: str, devices: Sequence[Device], availability: dict[str, Any], origin: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """Device-based discovery (HA 2024.11+): ``<prefix>/device/<device id>/config``."""
    out = []
    for device in devices:
        cmps = {
            e.key: {"p": e.platform, **e.options, **_entity_ids(e)} for e in device.entities
        }
        payload = {"dev": device.block, "o": origin, **availability, "qos": 1, "cmps": cmps}
        out.append((f"{prefix}/device/{device.object_id}/config", payload))
    return out


def unique_ids_of(payload: dict[str, Any]) -> list[str]:
    """The unique ids a config payload declares (one, or one per component)."""
    if "cmps" in payload:
        return [c["uniq_id"] for c in payload["cmps"].values() if "uniq_id" in c]
    return [payload["uniq_id"]] if "uniq_id" in payload else []


def encode_config(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities are refused (HA's JSON parser rejects them)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def parse_mode(payload: bytes | str) -> Mode | None:
    """A ``mode/set`` payload as a mode: auto/force_on/force_off, ON/OFF; else None."""
    if isinstance(payload, bytes):
        if len(payload) > MAX_COMMAND_BYTES:
            return None
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return _COMMANDS.get(payload.strip().lower())


def build_context(
    *,
    net_export_kw: float | None,
    alloc: Alloc | None,
    alloc_kw: float,
    grid_level: int,
    coordinator_online: bool,
    degraded: bool,
    max_site_kw: float,
) -> SiteContext:
    """The ``site/{s}/context`` payload; ``alloc`` is the allocation in force, if any."""
    cap = max_site_kw
    net = None
    if net_export_kw is not None and math.isfinite(net_export_kw):
        net = round(max(-cap, min(cap, net_export_kw)), 3)
    return SiteContext.model_validate(
        {
            "net_export_kw": net,
            "cycle": alloc.cycle if alloc is not None else None,
            "alloc_kw": round(max(0.0, min(cap, float(alloc_kw))), 3),
            "rank": alloc.rank if alloc is not None else 0,
            "grid_level": max(0, min(3, int(grid_level))),
            "coordinator_online": bool(coordinator_online),
            "degraded": bool(degraded),
        },
        context={"max_site_kw": cap},
    )


# The ledger of what was announced ----------------------------------------------------


class Ledger(Protocol):
    """Where the announced config topics (and their unique ids) are remembered."""

    def load(self) -> dict[str, list[str]]: ...

    def save(self, announced: dict[str, list[str]]) -> None: ...


class MemoryLedger:
    """A ledger in memory (tests, or no state dir)."""

    def __init__(self, announced: dict[str, list[str]] | None = None) -> None:
        self.announced = dict(announced or {})

    def load(self) -> dict[str, list[str]]:
        return dict(self.announced)

    def save(self, announced: dict[str, list[str]]) -> None:
        self.announced = dict(announced)


class FileLedger:
    """A JSON file in the gateway's state dir, replaced atomically.

    A missing or unreadable file reads as empty (logged): nothing to remove.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("hass_ledger_unreadable", path=str(self.path), error=str(exc))
            return {}
        configs = data.get("configs") if isinstance(data, dict) else None
        if not isinstance(configs, dict):
            log.warning("hass_ledger_unreadable", path=str(self.path), error="no configs")
            return {}
        return {
            str(topic): [str(u) for u in uids]
            for topic, uids in configs.items()
            if isinstance(uids, list)
        }

    def save(self, announced: dict[str, list[str]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"v": 1, "configs": announced}, indent=1), "utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("hass_ledger_not_saved", path=str(self.path), error=str(exc))
            with contextlib.suppress(OSError):
                tmp.unlink()


# The shell --------------------------------------------------------------------------------


class HassDiscovery:
    """Announces the gateway to Home Assistant and relays the resident's commands."""

    def __init__(
        self,
        topics: Topics,
        settings: HassSettingsLike,
        site: SiteLike,
        loads: Sequence[LoadLike],
        publish: Publish,
        version: str,
        *,
        form: str | None = None,
        ledger: Ledger | None = None,
        context_interval_s: float = 10.0,
    ) -> None:
        form = form if form is not None else getattr(settings, "discovery", "entity")
        if form not in DISCOVERY_FORMS:
            raise ValueError(
                f"[homeassistant] discovery must be one of {', '.join(DISCOVERY_FORMS)}, "
                f"not {form!r}"
            )
        prefix = settings.discovery_prefix
        if not prefix or prefix != prefix.strip("/") or any(c in prefix for c in "#+\0"):
            raise ValueError(
                f"[homeassistant] discovery_prefix {prefix!r} must be a topic without "
                "wildcards or leading/trailing '/'"
            )
        self.topics = topics
        self.settings = settings
        self.enabled = settings.enabled
        self.prefix = prefix
        self.form: DiscoveryForm = "device" if form == "device" else "entity"
        self.site = site.id
        self.loads = {ld.id: ld for ld in loads}
        self.publish = publish
        self.version = version
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self.context_interval_s = context_interval_s
        self.devices = build_devices(topics, site, list(loads), version)
        self.on_mode: OnMode | None = None
        self.rejected = 0
        self._modes: dict[str, str] = {}
        self._context_key: tuple[Any, ...] | None = None
        self._context_net: float | None = None
        self._context_at_s: float | None = None
        self.log = log.bind(community=topics.community, site=site.id)

    @property
    def status_topic(self) -> str:
        """Home Assistant's birth and will topic (its default for our prefix)."""
        return f"{self.prefix}/status"

    # Pure ------------------------------------------------------------------------------
    def configs(self) -> list[tuple[str, dict[str, Any]]]:
        """Every discovery config to publish: ``(topic, payload)``, in the chosen form."""
        availability = _availability(self.topics, self.site)
        origin = {"name": ORIGIN_NAME, "sw": self.version}
        build = device_configs if self.form == "device" else entity_configs
        return build(self.prefix, self.devices, availability, origin)

    # Wiring ------------------------------------------------------------------------------
    def attach(self, subscribe: Subscribe, on_mode: OnMode) -> None:
        """Subscribe to HA's birth topic and each load's ``mode/set`` (no-op when disabled)."""
        self.on_mode = on_mode
        if not self.enabled:
            return
        subscribe(self.status_topic, self._on_status)
        for load in self.loads:
            subscribe(self.topics.load_mode_set(self.site, load), self._mode_handler(load))

    def announce(self) -> None:
        """Publish every config (retained); remove or migrate what is no longer ours.

        Disabled: remove everything announced before. Call it once connected and
        on every reconnect; it also makes the next mode and context publications go out.
        """
        previous = self.ledger.load()
        current = self.configs() if self.enabled else []
        topics_now = {topic for topic, _ in current}
        uids_now = {uid for _, payload in current for uid in unique_ids_of(payload)}
        stale = {t: uids for t, uids in previous.items() if t not in topics_now}
        moved = [t for t, uids in stale.items() if uids_now.intersection(uids)]
        for topic in moved:
            self.publish(topic, MIGRATE_PAYLOAD, qos=1, retain=False)
        for topic, payload in current:
            self.publish(topic, encode_config(payload), qos=1, retain=True)
        for topic in stale:
            self.publish(topic, b"", qos=1, retain=True)
        self.ledger.save({topic: unique_ids_of(payload) for topic, payload in current})
        self._modes.clear()
        self._context_key = None
        self.log.info("hass_announced", form=self.form, enabled=self.enabled,
                      configs=len(current), removed=len(stale) - len(moved), migrated=len(moved))

    def retract(self) -> None:
        """Remove every config announced before (an empty retained payload on each)."""
        previous = self.ledger.load()
        for topic in previous:
            self.publish(topic, b"", qos=1, retain=True)
        self.ledger.save({})
        self.log.info("hass_retracted", removed=len(previous))

    # Incoming --------------------------------------------------------------------------------
    def handle_status(self, payload: bytes | str) -> bool:
        """HA's birth message (``online``) re-announces; returns whether it did."""
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        if text.strip() != "online":
            self.log.info("hass_status", status=text[:20])
            return False
        self.log.info("hass_online")
        self.announce()
        return True

    def handle_mode_set(self, load: str, payload: bytes | str) -> Mode | None:
        """Parse a ``mode/set`` command; a bad one is logged and counted, never raised."""
        mode = parse_mode(payload) if load in self.loads else None
        if mode is None:
            self.rejected += 1
            raw = payload if isinstance(payload, bytes) else payload.encode("utf-8", "replace")
            self.log.warning("hass_command_rejected", load=load,
                             excerpt=raw[:40].decode("utf-8", "replace"),
                             accepted=sorted(_COMMANDS))
        return mode

    def _on_status(self, topic: str, payload: bytes) -> None:
        try:
            self.handle_status(payload)
        except Exception:
            self.log.exception("hass_handler_failed", topic=topic,
                               payload=payload[:40].decode("utf-8", "replace"))

    def _mode_handler(self, load: str) -> Handler:
        def on_message(topic: str, payload: bytes) -> None:
            try:
                mode = self.handle_mode_set(load, payload)
                if mode is not None and self.on_mode is not None:
                    self.log.info("hass_mode_set", load=load, mode=mode)
                    self.on_mode(load, mode)
            except Exception:
                self.log.exception("hass_handler_failed", topic=topic,
                                   payload=payload[:40].decode("utf-8", "replace"))
        return on_message

    # State publications ------------------------------------------------------------------
    def publish_mode(self, load: str, mode: str) -> None:
        """``load/{l}/mode`` (retained, plain text), when it changed."""
        if not self.enabled or self._modes.get(load) == mode:
            return
        self._modes[load] = mode
        self.publish(self.topics.load_mode(self.site, load), mode, qos=1, retain=True)

    def publish_modes(self, views: Iterable[Any]) -> None:
        """The modes of ``LocalEms.views()`` (anything with ``id`` and ``mode``)."""
        for view in views:
            self.publish_mode(view.id, view.mode)

    def publish_context(self, context: SiteContext, now_s: float) -> None:
        """``site/{s}/context`` (retained): at once when anything but the net export
        changed, and at most every ``context_interval_s`` for the net export alone."""
        if not self.enabled:
            return
        key = (context.cycle, context.alloc_kw, context.rank, context.grid_level,
               context.coordinator_online, context.degraded)
        net = None if context.net_export_kw is None else round(context.net_export_kw, 2)
        if key == self._context_key:
            if net == self._context_net:
                return
            if (self._context_at_s is not None
                    and now_s - self._context_at_s < self.context_interval_s):
                return
        self._context_key, self._context_net, self._context_at_s = key, net, now_s
        self.publish(self.topics.site_context(self.site), encode(context), qos=1, retain=True)
