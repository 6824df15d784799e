"""The Shelly drivers and the generic meter against simulated devices on a real mosquitto.

Each test runs its drivers on one asyncio loop through ``PahoPort`` (handlers
marshalled onto the loop, as in the gateway) and its simulated devices as their
own MQTT clients, with unique ids, so no test sees another's retained messages.
Command timeouts are short (0.3 s) so the failure paths stay fast.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs

from gateway.config import DeviceSettings
from gateway.devices.base import Device
from gateway.devices.registry import build_device
from gateway.devices.shelly_gen1 import ShellyGen1Switch
from gateway.devices.shelly_gen2 import ShellyGen2Switch
from gateway.devices.shelly_rpc import ShellyRpcError
from gateway.errors import DeviceError, DeviceUnavailable
from gateway.sim.mqtt_device import SimLoad, SimMqttDevice
from gateway.sim.port import PahoPort
from gateway.sim.shelly import (
    SimShellyEm,
    SimShellyGen1Plug,
    SimShellyGen2Switch,
    SimShellyPro3Em,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T = TypeVar("T")
SHORT_S = 0.3  # command timeout for the failure paths


class StepClock:
    """Monotonic time that a test can move forward (freshness checks)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset_s


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 20.0) -> T:
    """Run an async test body with an overall timeout, so nothing hangs."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


async def until(predicate: Callable[[], object], what: str, timeout_s: float = 3.0) -> None:
    """Wait until ``predicate()`` is true (polling the loop), or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def uid(n: int = 6) -> str:
    return uuid.uuid4().hex[:n]


@pytest.fixture
def sims(mosquitto: Any) -> Iterator[Callable[..., Any]]:
    """Start simulated devices on the session's broker; stopped at teardown."""
    made: list[SimMqttDevice] = []

    def make(cls: type[SimMqttDevice], **options: Any) -> Any:
        sim = cls(mosquitto.host, mosquitto.port, **options)
        sim.start()
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.stop()


class Rig:
    """One test's port, clock and change log; builds and starts drivers."""

    def __init__(self, port: PahoPort) -> None:
        self.port = port
        self.clock = StepClock()
        self.changes: list[str] = []

    async def device(self, profile: str, dev_id: str | None = None, **options: Any) -> Any:
        settings = DeviceSettings(id=dev_id or f"d{uid()}", profile=profile, **options)
        device: Device = build_device(
            settings, settings.model, self.port, self.clock, self.changes.append
        )
        await device.start()
        await self.port.synced()
        return device

    async def publish(self, topic: str, payload: bytes | str) -> None:
        self.port.publish(topic, payload)
        await asyncio.sleep(0)


@asynccontextmanager
async def rig(broker: Any) -> AsyncIterator[Rig]:
    port = PahoPort(broker.host, broker.port)
    await port.start()
    try:
        yield Rig(port)
    finally:
        await port.stop()


# -- Shelly Gen1 (Plug S, 1PM) ------------------------------------------------------


def test_gen1_switch_on_off_power_and_energy(mosquitto: Any, sims: Any) -> None:
    # A real capture's counter (reference §1): 2803153 W·min = 46.719 kWh.
    sim = sims(SimShellyGen1Plug, device_id=uid().upper(), energy_wmin=2803153,
               load=SimLoad(nominal_w=2000.0))

    async def body() -> None:
        async with rig(mosquitto) as r:
            dev: ShellyGen1Switch = await r.device("shelly/plug-s", "plug1", prefix=sim.mqtt_id)
            relay = dev.relays()[0]
            assert relay.relay_id == "plug1/0"
            await until(lambda: relay.state.available, "the announce")
            await until(lambda: relay.state.energy_kwh is not None, "the energy counter")
            assert relay.state.on is False
            assert relay.state.energy_kwh == pytest.approx(2803153 / 60 / 1000)

            await relay.set(True)
            assert relay.state.on is True and sim.relay_on
            await until(lambda: (relay.state.power_kw or 0) > 1.9, "the power on")
            assert relay.state.power_kw == pytest.approx(2.0, rel=0.05)
            assert "plug1/0" in r.changes

            await relay.set(True)  # already on: confirmed through an `update`
            assert sim.commands.count((f"{sim.base}/command", "update")) >= 2

            await relay.set(False)
            assert relay.state.on is False and not sim.relay_on
            await until(lambda: relay.state.power_kw == 0.0, "the power off")

            sim.publish_state()  # the counter moved while the load ran
            await until(
                lambda: (relay.state.energy_kwh or 0) > 2803153 / 60000, "the energy growing"
            )
            await dev.stop()

    run(body())


def test_gen1_satisfied_thermostat_draws_nothing(mosquitto: Any, sims: Any) -> None:
    sim = sims(SimShellyGen1Plug, model="SHSW-PM", device_id=uid().upper(), relay_on=True)

    async def body() -> None:
        async with rig(mosquitto) as r:
            dev = await r.device("shelly/1pm", prefix=sim.mqtt_id)
            relay = dev.relays()[0]
            await until(lambda: (relay.state.power_kw or 0) > 1.9, "the heater heating")
            sim.set_satisfied(True)
            await until(lambda: relay.state.power_kw == 0.0, "the thermostat satisfied")
            assert relay.state.on is True

    run(body())


def test_gen1_overpower_trips_and_set_fails(mosquitto: Any, sims: Any) -> None:
    sim = sims(SimShellyGen1Plug, device_id=uid().upper(), load=SimLoad(nominal_w=3000.0))

    async def body() -> None:
        async with rig(mosquitto) as r:
            dev = await r.device("shelly/plug-s", prefix=sim.mqtt_id, command_timeout_s=SHORT_S)
            relay = dev.relays()[0]
            await until(lambda: relay.state.available, "the announce")
            with pytest.raises(DeviceError, match="overpower") as err:
                await relay.set(True)
            assert not isinstance(err.value, DeviceUnavailable)
            assert err.value.channel == 0
            assert relay.state.on is False and sim.overpowered

    run(body())


def test_gen1_offline_will_and_back(mosquitto: Any, sims: Any) -> None:
    sim = sims(SimShellyGen1Plug, device_id=uid().upper())

    async def body() -> None:
        async with rig(mosquitto) as r:
            dev = await r.device("shelly/plug-s", "plug2", prefix=sim.mqtt_id)
            relay = dev.relays()[0]
            await until(lambda: relay.state.available, "the announce")

            sim.go_offline()  # no DISCONNECT: the broker sends the will
            await until(lambda: not relay.state.available, "the will")
            assert dev.online is False
            with pytest.raises(DeviceUnavailable):
                await relay.set(True)

            sim.go_online()
            await until(lambda: relay.state.available, "back online")
            await relay.set(True)
            assert sim.relay_on

    run(body())


def test_gen1_unanswered_command_times_out(mosquitto: Any, sims: Any) -> None:
    sim = sims(SimShellyGen1Plug, device_id=uid().upper())
    sim.ignore_commands = True  # online, but the relay never follows

    async def body() -> None:
        async with rig(mosquitto) as r:
            dev = await r.device("shelly/plug-s", prefix=sim.mqtt_id, command_timeout_s=SHORT_S)
            relay = dev.relays()[0]
            await until(lambda: relay.state.available, "the announce")
            started = time.monotonic()
            with pytest.raises(DeviceError, match="no report of 'on'") as err:
                await relay.set(True)
            assert not isinstance(err.value, DeviceUnavailable)
            assert time.monotonic() - started >= SHORT_S * 0.9

            # A plug never heard of at all is unavailable, not merely slow.
            ghost = await r.device("shelly/plug-s", prefix=f"shellyplug-s-{uid().upper()}",
                                   command_timeout_s=SHORT_S)
            with pytest.raises(DeviceUnavailable):
                await ghost.relays()[0].set(True)

    run(body())


def test_gen1_malformed_payloads_are_counted(mosquitto: Any, sims: Any) -> None:
    sim = sims(SimShellyGen1Plug, device_id=uid().upper())
    base = sim.base

    async def body() -> None:
        async with rig(mosquitto) as r:
            with capture_logs() as logs:
                dev = await r.device("shelly/plug-s", prefix=sim.mqtt_id)
                relay = dev.relays()[0]
                await until(lambda: relay.state.available, "the announce")
                before = dev.bad_payloads
                for topic, payload in [
                    (f"{base}/relay/0", "banana"),
                    (f"{base}/relay/0/power", "12,5"),
                    (f"{base}/relay/0/power", "nan"),
                    (f"{base}/relay/0/energy", "-3"),
                    (f"{base}/online", "maybe"),
                    (f"{base}/announce", "{not json"),
                    (f"{base}/info", "[]"),
                ]:
                    await r.publish(topic, payload)
                await until(lambda: dev.bad_payloads - before == 7, "7 bad payloads")
                await r.publish(f"{base}/relay/0/power", "37.71")  # still listening
                await until(lambda: relay.state.power_kw == pytest.approx(0.03771), "a good one")
            bad = [e for e in logs if e["event"] == "bad_payload"]
            assert {e["topic"] for e in bad} >= {f"{base}/relay/0", f"{base}/announce"}
            assert all(e["device"] == dev.device_id for e in bad)

    run(body())


# -- Shelly Gen2 (Plus Plug S, Plus 1PM, Pro 4PM) ------------------------------------


def test_gen2_switch_on_off_power_and_energy(mosquitto: Any, sims: Any) -> None:
    # aenergy.total is in Wh (reference §2): 1543.25 Wh = 1.54325 kWh.
    sim = sims(SimShellyGen2Switch, device_id=uid(12), aenergy_wh=1543.25)

    async def body() -> None:
        async with rig(mosquitto) as r:
            dev: ShellyGen2Switch = await r.device(
                "shelly/plus-plug-s", "plugs", prefix=sim.prefix
            )
            relay = dev.relays()[0]
            await until(lambda: relay.state.energy_kwh is not None, "the full status")
            assert relay.state.available and relay.state.on is False
            assert relay.state.energy_kwh == pytest.approx(1.54325)

            await relay.set(True)
            assert relay.state.on is True and sim.output(0)
            await until(lambda: (relay.state.power_kw or 0) > 1.9, "apower on")
            request = sim.requests[-1]
            assert request["method"] == "Switch.Set"
            assert request["params"] == {"id": 0, "on": True}
            assert request["src"] == dev.src == "ems-gw-plugs"

            await relay.set(False)
            await until(lambda: relay.state.power_kw == 0.0, "apower off")
            assert not sim.output(0)

            sim.switch(True)  # the button: a NotifyStatus, no command of ours
            await until(lambda: relay.state.on is True, "the local change")
            assert "plugs/0" in r.changes

    run(body())


def test_gen2_pro4pm_channels_are_independent(mosquitto: Any, sims: Any) -> None:
    sim = sims(SimShellyGen2Switch, model="SPSW-104PE16EU", device_id=uid(12),
               loads=[SimLoad(nominal_w=w) for w in (500.0, 1000.0, 1500.0, 2000.0)])

    async def body() -> None:
        async with rig(mosquitto) as r:
            dev = await r.device("shelly/pro-4pm", "pro4", prefix=sim.prefix)
            relays = dev.relays()
            assert sorted(relays) == [0, 1, 2, 3]
            await until(lambda: all(x.state.on is False for x in relays.values()), "status")
            await relays[2].set(True)
            await until(lambda: (relays[2].state.power_kw or 0) > 1.4, "channel 2's power")
            assert [sim.output(n) for n in range(4)] == [False, False, True, False]
            assert [relays[n].state.on for n in range(4)] == [False, False, True, False]
            assert relays[2].state.power_kw == pytest.approx(1.5, rel=0.05)

    run(body())


def test_gen2_rpc_errors_carry_the_code(mosquitto: Any, sims: Any) -> None:
    sim = sims(SimShellyGen2Switch, device_id=uid(12))  # one channel
    old = sims(SimShellyGen2Switch, device_id=uid(12), legacy_errors=True)

    async def body() -> None:
        async with rig(mosquitto) as r:
            # Configured as a Pro 4PM, but the device has only switch:0.
            dev = await r.device("shelly/pro-4pm", prefix=sim.prefix)
            await until(lambda: dev.relays()[0].state.available, "the status")
            with pytest.raises(ShellyRpcError) as err:
                await dev.relays()[3].set(True)
            assert err.value.code == -105
            assert err.value.channel == 3
            assert isinstance(err.value, DeviceError)
            assert "-105" in str(err.value)

            with pytest.raises(ShellyRpcError) as err:
                await dev.rpc("Script.GetCode", {"id": 1})
            assert err.value.code == -114
            with pytest.raises(ShellyRpcError) as err:
                await dev.rpc("Switch.Set", {"id": 0})
            assert err.value.code == -103
            status = await dev.rpc("Switch.GetStatus", {"id": 0})
            assert status["id"] == 0 and "aenergy" in status

            legacy = await r.device("shelly/plus-plug-s", prefix=old.prefix)
            with pytest.raises(ShellyRpcError) as err:
                await legacy.rpc("Script.GetCode", {"id": 1})
            assert err.value.code == 404

    run(body())


def test_gen2_offline_will_and_back(mosquitto: Any, sims: Any) -> None:
    sim = sims(SimShellyGen2Switch, model="SNSW-001P16EU", device_id=uid(12))

    async def body() -> None:
        async with rig(mosquitto) as r:
            dev = await r.device("shelly/plus-1pm", prefix=sim.prefix)
            relay = dev.relays()[0]
            await until(lambda: relay.state.available, "online")
            sim.go_offline()
            await until(lambda: not relay.state.available, "the will")
            with pytest.raises(DeviceUnavailable):
                await relay.set(True)
            sim.switch(True)  # switched by hand while offline
            sim.go_online()
            await until(lambda: relay.state.available, "back online")
            await until(lambda: relay.state.on is True, "the full status after reconnect")
            await relay.set(False)
            assert not sim.output(0)

    run(body())


def test_gen2_unanswered_rpc_times_out(mosquitto: Any, sims: Any) -> None:
    sim = sims(SimShellyGen2Switch, device_id=uid(12))

    async def body() -> None:
        async with rig(mosquitto) as r:
            dev = await r.device("shelly/plus-plug-s", prefix=sim.prefix,
                                 command_timeout_s=SHORT_S)
            relay = dev.relays()[0]
            await until(lambda: relay.state.available, "online")
            sim.answer_rpc = False
            with pytest.raises(DeviceError, match=r"no reply to Switch\.Set") as err:
                await relay.set(True)
            assert not isinstance(err.value, DeviceUnavailable)
            assert sim.requests[-1]["method"] == "Switch.Set"

    run(body())


def test_gen2_status_topics_without_rpc_notifications(mosquitto: Any, sims: Any) -> None:
    # rpc_ntf off, status_ntf on: the state comes from <prefix>/status/switch:0.
    sim = sims(SimShellyGen2Switch, device_id=uid(12), rpc_ntf=False, status_ntf=True,
               aenergy_wh=10.0)

    async def body() -> None:
        async with rig(mosquitto) as r:
            dev = await r.device("shelly/plus-plug-s", prefix=sim.prefix)
            relay = dev.relays()[0]
            await until(lambda: relay.state.energy_kwh == pytest.approx(0.01), "status")
            sim.switch(True)
            await until(lambda: relay.state.on is True, "status/switch:0")
            await until(lambda: (relay.state.power_kw or 0) > 1.9, "apower")

    run(body())


def test_gen2_status_learned_when_started_before_the_broker(mosquitto: Any, sims: Any) -> None:
    # The gateway starts its drivers before its MQTT connection is up: the first
    # Shelly.GetStatus expires; the retained online=true then triggers another.
    sim = sims(SimShellyGen2Switch, device_id=uid(12), aenergy_wh=5.0)
    sim.switch(True)

    async def body() -> None:
        port = PahoPort(mosquitto.host, mosquitto.port)
        settings = DeviceSettings(id="late", profile="shelly/plus-plug-s", prefix=sim.prefix,
                                  command_timeout_s=SHORT_S)
        dev = build_device(settings, settings.model, port, StepClock(), lambda _id: None)
        await dev.start()
        await asyncio.sleep(SHORT_S * 1.5)  # the first request has expired
        await port.start()
        try:
            relay = dev.relays()[0]
            await until(lambda: relay.state.energy_kwh == pytest.approx(0.005), "the status")
            assert relay.state.on is True and relay.state.available
        finally:
            await port.stop()

    run(body())


def test_gen2_malformed_payloads_are_counted(mosquitto: Any, sims: Any) -> None:
    sim = sims(SimShellyGen2Switch, device_id=uid(12))
    p = sim.prefix

    async def body() -> None:
        async with rig(mosquitto) as r:
            dev = await r.device("shelly/plus-plug-s", prefix=p)
            relay = dev.relays()[0]
            await until(lambda: relay.state.available, "online")
            before = dev.bad_payloads
            for topic, payload in [
                (f"{p}/events/rpc", "{bad"),
                (f"{p}/events/rpc", '{"method":"NotifyStatus","params":{"switch:0":"x"}}'),
                (f"{p}/events/rpc", '{"method":"NotifyStatus","params":{"switch:0":'
                                    '{"output":"yes"}}}'),
                (f"{p}/status/switch:0", "[]"),
                (f"{p}/online", "1"),
                (f"{dev.src}/rpc", "garbage"),
            ]:
                await r.publish(topic, payload)
            await until(lambda: dev.bad_payloads - before == 6, "6 bad payloads")
            # Unknown components, NotifyEvent and a removed key are not errors.
            await r.publish(f"{p}/events/rpc", '{"method":"NotifyEvent","params":{"events":[]}}')
            await r.publish(f"{p}/events/rpc",
                            '{"method":"NotifyStatus","params":{"sys":{},"switch:0":null}}')
            await r.publish(f"{p}/events/rpc",
                            '{"method":"NotifyStatus","params":{"switch:0":{"apower":12.5}}}')
            await until(lambda: relay.state.power_kw == pytest.approx(0.0125), "a good one")
            assert dev.bad_payloads - before == 6
            await relay.set(True)  # still works

    run(body())


# -- meters -----------------------------------------------------------------------------


def test_shelly_em_sign_channel_and_staleness(mosquitto: Any, sims: Any) -> None:
    sim = sims(SimShellyEm, device_id=uid().upper())

    async def body() -> None:
        async with rig(mosquitto) as r:
            grid = await r.device("shelly/em", "em1", prefix=sim.mqtt_id, channel=1)
            reversed_ = await r.device("shelly/em", prefix=sim.mqtt_id, channel=1,
                                       sign="export_positive")
            meter, meter_rev = grid.net_meter(), reversed_.net_meter()
            assert grid.relays() == {}
            await until(lambda: meter.net_export_kw == 0.0, "the first reading")

            sim.set_power_w(1500.0, channel=1)  # importing: the home draws 1.5 kW
            await until(lambda: meter.net_export_kw == pytest.approx(-1.5), "import")
            assert meter_rev.net_export_kw == pytest.approx(1.5)
            sim.set_power_w(-2000.0, channel=1)  # exporting
            await until(lambda: meter.net_export_kw == pytest.approx(2.0), "export")
            sim.set_power_w(999.0, channel=0)  # the other clamp: not the grid
            await asyncio.sleep(0.1)
            assert meter.net_export_kw == pytest.approx(2.0)
            assert meter.meter_id == "em1" and "em1" in r.changes

            r.clock.offset_s += 301  # past the 5-minute freshness limit
            assert meter.net_export_kw is None
            sim.set_power_w(-2100.0, channel=1)
            await until(lambda: meter.net_export_kw == pytest.approx(2.1), "a fresh reading")

            sim.go_offline()
            await until(lambda: meter.net_export_kw is None, "offline")
            sim.go_online()
            await until(lambda: meter.net_export_kw == pytest.approx(2.1), "back online")

    run(body())


def test_shelly_pro3em_total_active_power(mosquitto: Any, sims: Any) -> None:
    sim = sims(SimShellyPro3Em, device_id=uid(12), power_w=600.0)

    async def body() -> None:
        async with rig(mosquitto) as r:
            dev = await r.device("shelly/pro-3em", "p3em", prefix=sim.prefix)
            meter = dev.net_meter()
            await until(lambda: meter.net_export_kw == pytest.approx(-0.6), "GetStatus")
            sim.set_power_w(-3000.0)
            await until(lambda: meter.net_export_kw == pytest.approx(3.0), "export")
            sim.set_phase_powers_w(1000.0, -500.0, 200.0)
            await until(lambda: meter.net_export_kw == pytest.approx(-0.7), "per phase")
            r.clock.offset_s += 301
            assert meter.net_export_kw is None
            rev = await r.device("shelly/pro-3em", prefix=sim.prefix, sign="export_positive")
            await until(lambda: rev.net_meter().net_export_kw == pytest.approx(0.7), "reversed")

            before = dev.bad_payloads
            await r.publish(f"{sim.prefix}/status/em:0", '{"total_act_power":"lots"}')
            await r.publish(f"{sim.prefix}/events/rpc", '{"method":"NotifyStatus",'
                                                        '"params":{"em:0":[1]}}')
            await until(lambda: dev.bad_payloads - before == 2, "2 bad payloads")

    run(body())


def test_generic_meter_json_field_and_plain_number(mosquitto: Any) -> None:
    root = f"t{uid(10)}"

    async def body() -> None:
        async with rig(mosquitto) as r:
            p1 = await r.device(
                "generic/mqtt-meter", "p1", topic=f"{root}/p1", field="grid.power"
            )
            ha = await r.device("generic/mqtt-meter", "ha", topic=f"{root}/ha", unit="kW",
                                sign="export_positive")
            arr = await r.device("generic/mqtt-meter", topic=f"{root}/arr", field="phases.1.p")
            m_p1, m_ha, m_arr = p1.net_meter(), ha.net_meter(), arr.net_meter()
            assert m_p1.net_export_kw is None  # nothing yet

            await r.publish(f"{root}/p1", '{"grid": {"power": 1234.5}, "ts": 1}')
            await r.publish(f"{root}/ha", "2.5")
            await r.publish(f"{root}/arr", '{"phases": [{"p": 1}, {"p": "-800"}]}')
            await until(lambda: m_p1.net_export_kw == pytest.approx(-1.2345), "P1 import")
            await until(lambda: m_ha.net_export_kw == pytest.approx(2.5), "kW export")
            await until(lambda: m_arr.net_export_kw == pytest.approx(0.8), "list index")
            assert "p1" in r.changes

            for payload in ["abc", '{"grid": {}}', "[1,2", '{"grid": {"power": null}}']:
                await r.publish(f"{root}/p1", payload)
            for payload in ["", "true", "NaN"]:
                await r.publish(f"{root}/ha", payload)
            await until(lambda: p1.bad_payloads == 4 and ha.bad_payloads == 3, "bad payloads")
            assert m_p1.net_export_kw == pytest.approx(-1.2345)  # the last good one stays

            r.clock.offset_s += 301
            assert m_p1.net_export_kw is None and m_ha.net_export_kw is None

    run(body())


def test_periodic_updates_keep_readings_fresh(mosquitto: Any, sims: Any) -> None:
    # Short periods and a fast simulated clock: counters visibly move between ticks.
    plug = sims(SimShellyGen1Plug, device_id=uid().upper(), relay_on=True,
                update_period_s=0.1, speed=60.0)
    plus = sims(SimShellyGen2Switch, device_id=uid(12), period_s=0.1, speed=60.0)
    em = sims(SimShellyEm, device_id=uid().upper(), update_period_s=0.1,
              publish_on_change=False, power_w=(-500.0, 0.0))
    pro = sims(SimShellyPro3Em, device_id=uid(12), period_s=0.1, power_w=-900.0)

    async def body() -> None:
        async with rig(mosquitto) as r:
            gen1 = (await r.device("shelly/plug-s", prefix=plug.mqtt_id)).relays()[0]
            gen2_dev = await r.device("shelly/plus-plug-s", prefix=plus.prefix)
            gen2 = gen2_dev.relays()[0]
            m_em = (await r.device("shelly/em", prefix=em.mqtt_id)).net_meter()
            m_pro = (await r.device("shelly/pro-3em", prefix=pro.prefix)).net_meter()

            await until(lambda: gen1.state.energy_kwh is not None, "gen1 energy")
            first = gen1.state.energy_kwh or 0.0
            await until(lambda: (gen1.state.energy_kwh or 0) > first, "gen1 counter ticking")

            await gen2.set(True)
            await until(lambda: gen2.state.energy_kwh is not None, "gen2 energy")
            first = gen2.state.energy_kwh or 0.0
            await until(lambda: (gen2.state.energy_kwh or 0) > first, "aenergy rolling")

            await until(lambda: m_em.net_export_kw == pytest.approx(0.5), "EM periodic")
            em.set_power_w(-700.0)  # not published at once: the next tick carries it
            await until(lambda: m_em.net_export_kw == pytest.approx(0.7), "EM next tick")
            seen = m_pro.updated_s
            await until(lambda: m_pro.updated_s != seen, "Pro 3EM periodic")
            assert m_pro.net_export_kw == pytest.approx(0.9)

    run(body())
