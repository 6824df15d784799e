"""The Phidget 1017 relay-board driver: the real Phidget22 library, then a fake board.

No broker and no board needed. The first tests load the REAL libphidget22
(shipped in the Phidget22 wheel, linked against libusb-1.0) and check what it
does with no board attached; a missing libusb fails them with the fix, it
does not skip them. The others put ``gateway.sim.phidget.FakeBoard`` behind
the driver's ``channel_factory``: only the USB hardware is faked.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.config import DeviceSettings
from gateway.devices.phidget import PhidgetRelayBoard
from gateway.devices.registry import driver_class
from gateway.errors import DeviceError, DeviceUnavailable
from gateway.profiles import PhidgetDigitalOutput, get_profile
from gateway.sim.phidget import FakeBoard

LIBUSB_HINT = (
    "install Debian's libusb-1.0-0 (`apt-get install libusb-1.0-0`, which "
    "scripts/system-deps does): libphidget22.so links libusb-1.0.so.0"
)
NO_SUCH_SERIAL = 987_654  # no board with this serial is ever plugged in here
SERIAL = 123_456


def load_phidget22() -> Any:
    """The real library's DigitalOutput class, or a test failure that names the fix."""
    try:
        from Phidget22._phidget_support import PhidgetSupport
        from Phidget22.Devices.DigitalOutput import DigitalOutput

        PhidgetSupport.getDll()  # type: ignore[no-untyped-call]  # loads libphidget22.so, and with it libusb-1.0.so.0
    except (ImportError, OSError) as exc:
        pytest.fail(f"the Phidget22 native library did not load ({exc}): {LIBUSB_HINT}",
                    pytrace=False)
    return DigitalOutput


class MonotonicClock:
    def monotonic(self) -> float:
        return time.monotonic()


def profile() -> PhidgetDigitalOutput:
    p = get_profile("phidget/1017")
    assert isinstance(p, PhidgetDigitalOutput)
    return p


def settings(serial: int | None = SERIAL, **kw: Any) -> DeviceSettings:
    values: dict[str, Any] = {"open_timeout_ms": 200, "retry_s": 0.1, "command_timeout_s": 1.0}
    values.update(kw)
    return DeviceSettings(id="board1", profile="phidget/1017", serial=serial, **values)


class Changes:
    """The ``on_change`` listener: records which relays changed."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, relay_id: str) -> None:
        self.ids.append(relay_id)


def make_board(
    fake: FakeBoard | None, changes: Changes, wiring: dict[int, str] | None = None, **kw: Any
) -> PhidgetRelayBoard:
    return PhidgetRelayBoard(
        settings(**kw), profile(), None, MonotonicClock(), changes,
        wiring=wiring, channel_factory=fake.digital_output if fake else None,
    )


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


def all_available(board: PhidgetRelayBoard) -> bool:
    return all(r.state.available for r in board.relays().values())


# -- the real Phidget22 library, no board attached -------------------------------------


def test_real_library_open_times_out_with_code_3_and_calls_fail_with_52() -> None:
    from Phidget22.ErrorCode import ErrorCode
    from Phidget22.PhidgetException import PhidgetException

    digital_output = load_phidget22()
    ch = digital_output()
    ch.setDeviceSerialNumber(NO_SUCH_SERIAL)
    ch.setChannel(0)
    started = time.monotonic()
    with pytest.raises(PhidgetException) as info:
        ch.openWaitForAttachment(300)
    assert time.monotonic() - started >= 0.25  # it really waited for a board
    assert info.value.code == ErrorCode.EPHIDGET_TIMEOUT and int(info.value.code) == 3
    assert info.value.description == "Timed Out"
    assert not ch.getIsOpen()  # the library closes the channel on timeout
    with pytest.raises(PhidgetException) as info:
        ch.setState(True)
    assert info.value.code == ErrorCode.EPHIDGET_NOTATTACHED and int(info.value.code) == 52
    ch.close()


def test_driver_on_real_library_without_board_is_unavailable_and_retries() -> None:
    load_phidget22()

    async def scenario() -> None:
        changes = Changes()
        board = make_board(None, changes, serial=NO_SUCH_SERIAL, retry_s=0.1)
        with capture_logs() as logs:
            await board.start()
            await until(lambda: board.open_attempts >= 3)
            relays = board.relays()
            assert sorted(relays) == list(range(8))
            assert not any(r.state.available for r in relays.values())
            with pytest.raises(DeviceUnavailable) as info:
                await relays[0].set(True)
            assert info.value.device == "board1" and info.value.channel == 0
            await board.stop()
        missing = [e for e in logs if e["event"] == "phidget_board_missing"]
        assert missing, logs
        assert missing[0]["code"] == 3 and missing[0]["code_name"] == "EPHIDGET_TIMEOUT"
        assert missing[0]["log_level"] == "warning"
        assert all(e["log_level"] == "debug" for e in missing[1:])  # said once, then quiet
        assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs

    run(scenario)


def test_registry_builds_the_phidget_driver() -> None:
    assert driver_class("phidget_digital_output") is PhidgetRelayBoard


# -- the fake board ------------------------------------------------------------------


def test_attach_makes_relays_available_and_wiring_decides_the_coil() -> None:
    async def scenario() -> None:
        fake = FakeBoard(SERIAL, plugged=True)
        changes = Changes()
        board = make_board(fake, changes, wiring={0: "on", 1: "off"})
        await board.start()
        try:
            await until(lambda: all_available(board))
            relays = board.relays()
            # All coils are released at power-up: "on" wiring = appliance off, "off" = on.
            assert relays[0].state.on is False
            assert relays[1].state.on is True
            assert relays[0].state.power_kw is None  # a relay measures nothing

            await relays[0].set(True)
            assert fake.energised(0) and relays[0].state.on is True
            await relays[1].set(False)  # cut the appliance: energise the NC contact
            assert fake.energised(1) and relays[1].state.on is False
            await relays[1].set(True)
            assert not fake.energised(1) and relays[1].state.on is True
            assert changes.ids[-3:] == ["board1/0", "board1/1", "board1/1"]
            assert relays[1].state.updated_s is not None
        finally:
            await board.stop()

    run(scenario)


def test_absent_board_is_unavailable_until_plugged_in() -> None:
    async def scenario() -> None:
        fake = FakeBoard(SERIAL, plugged=False)
        changes = Changes()
        board = make_board(fake, changes)
        with capture_logs() as logs:
            await board.start()
            await until(lambda: board.open_attempts >= 2)
            assert not any(r.state.available for r in board.relays().values())
            with pytest.raises(DeviceUnavailable):
                await board.relays()[3].set(True)
            fake.plug()
            await until(lambda: all_available(board))
            await board.relays()[3].set(True)
            assert fake.coils == (False, False, False, True, False, False, False, False)
            await board.stop()
        missing = [e for e in logs if e["event"] == "phidget_board_missing"]
        assert missing and missing[0]["code"] == 3  # the fake raised the real exception
        assert sorted(set(changes.ids)) == [f"board1/{n}" for n in range(8)]

    run(scenario)


def test_board_with_another_serial_is_not_used() -> None:
    async def scenario() -> None:
        fake = FakeBoard(SERIAL + 1, plugged=True)
        board = make_board(fake, Changes())
        await board.start()
        await until(lambda: board.open_attempts >= 2)
        assert not any(r.state.available for r in board.relays().values())
        await board.stop()

    run(scenario)


def test_detach_makes_unavailable_and_reattach_reapplies_the_last_command() -> None:
    async def scenario() -> None:
        fake = FakeBoard(SERIAL, plugged=True)
        changes = Changes()
        board = make_board(fake, changes, wiring={2: "off", 5: "on"})
        await board.start()
        try:
            await until(lambda: all_available(board))
            relays = board.relays()
            await relays[2].set(False)  # "off" wiring: energised = cut
            await relays[5].set(True)
            assert fake.energised(2) and fake.energised(5)

            changes.ids.clear()
            fake.unplug()  # detach handlers fire on another thread
            await until(lambda: not any(r.state.available for r in relays.values()))
            assert {"board1/2", "board1/5"} <= set(changes.ids)
            assert relays[2].state.on is None  # unknown while away
            with pytest.raises(DeviceUnavailable):
                await relays[2].set(True)
            assert fake.coils == (False,) * 8  # the board lost power

            with capture_logs() as logs:
                fake.plug()
                await until(lambda: all_available(board))
            assert fake.energised(2) and fake.energised(5)  # re-applied
            assert relays[2].state.on is False and relays[5].state.on is True
            assert relays[0].state.on is False  # never commanded: read from the board
            reapplied = {e["channel"] for e in logs if e["event"] == "relay_reapplied"}
            assert reapplied == {2, 5}
        finally:
            await board.stop()

    run(scenario)


def test_library_errors_and_timeouts_become_device_errors() -> None:
    from Phidget22.ErrorCode import ErrorCode
    from Phidget22.PhidgetException import PhidgetException

    async def scenario() -> None:
        fake = FakeBoard(SERIAL, plugged=True)
        board = make_board(fake, Changes(), command_timeout_s=0.2)
        await board.start()
        try:
            await until(lambda: all_available(board))
            relay = board.relays()[0]

            fake.fail_next("setState", ErrorCode.EPHIDGET_IO, channel=0)
            with pytest.raises(DeviceError) as info:
                await relay.set(True)
            assert type(info.value) is DeviceError
            assert isinstance(info.value.__cause__, PhidgetException)
            assert info.value.__cause__.code == 5
            assert "PhidgetException 5 EPHIDGET_IO" in str(info.value)
            assert info.value.device == "board1" and info.value.channel == 0

            fake.fail_next("setState", ErrorCode.EPHIDGET_NOTATTACHED, channel=0)
            with pytest.raises(DeviceUnavailable, match="52 EPHIDGET_NOTATTACHED"):
                await relay.set(True)

            fake.stall_next("setState", 0.6, channel=0)
            started = time.monotonic()
            with pytest.raises(DeviceError, match=r"timed out after 0\.2 s"):
                await relay.set(True)
            assert time.monotonic() - started < 0.5  # the loop did not wait for the thread
            assert relay.state.on is None  # the late write may still land

            await asyncio.sleep(0.5)  # let the stalled call finish
            await relay.set(False)
            assert relay.state.on is False and not fake.energised(0)
        finally:
            await board.stop()

    run(scenario)


def test_no_library_call_runs_on_the_event_loop_thread() -> None:
    loop_threads: list[int] = []

    async def scenario() -> None:
        loop_threads.append(threading.get_ident())
        fake = FakeBoard(SERIAL, plugged=False)
        board = make_board(fake, Changes(), wiring={1: "off"})
        await board.start()
        await until(lambda: board.open_attempts >= 1)
        fake.plug()
        await until(lambda: all_available(board))
        await board.relays()[1].set(False)
        fake.unplug()
        await until(lambda: not all_available(board))
        fake.plug()
        await until(lambda: all_available(board))
        await board.stop()
        methods = {c.method for c in fake.calls}
        assert {"openWaitForAttachment", "setState", "getState", "close"} <= methods
        assert loop_threads[0] not in fake.thread_ids()

    run(scenario)


def test_stop_closes_every_channel_and_releases_the_relays() -> None:
    async def scenario() -> None:
        fake = FakeBoard(SERIAL, plugged=True)
        changes = Changes()
        board = make_board(fake, changes)
        await board.start()
        await until(lambda: all_available(board))
        await board.relays()[4].set(True)
        assert fake.energised(4)
        await board.stop()
        closed = {c.channel for c in fake.calls if c.method == "close"}
        assert closed == set(range(8))
        assert fake.coils == (False,) * 8  # closing returns a relay to its default
        assert not any(r.state.available for r in board.relays().values())
        # A fresh board can claim the channels again: nothing was left open.
        again = make_board(fake, changes)
        await again.start()
        await until(lambda: all_available(again))
        await again.stop()

    run(scenario)


def test_a_failing_listener_and_error_events_do_not_break_the_board() -> None:
    async def scenario() -> None:
        fake = FakeBoard(SERIAL, plugged=True)

        def broken(relay_id: str) -> None:
            raise RuntimeError("listener bug")

        board = PhidgetRelayBoard(settings(), profile(), None, MonotonicClock(), broken,
                                  channel_factory=fake.digital_output)
        with capture_logs() as logs:
            await board.start()
            await until(lambda: all_available(board))
            await board.relays()[0].set(True)
            fake.error_event(0, 4104, "Bad power supply")
            await until(lambda: any(e["event"] == "phidget_error_event" for e in logs))
            await board.stop()
        assert fake.energised(0) is False  # closed at stop
        assert any(e["event"] == "on_change_failed" for e in logs)
        event = next(e for e in logs if e["event"] == "phidget_error_event")
        assert event["code"] == 4104 and event["channel"] == 0

    run(scenario)


def test_wiring_is_validated_and_fixed_before_start() -> None:
    fake = FakeBoard(SERIAL)
    board = make_board(fake, Changes(), wiring={7: "off"})
    assert board.relays()[7].energized_means == "off"  # type: ignore[attr-defined]
    assert board.relays()[0].energized_means == "on"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="energized_means"):
        board.set_wiring(0, "energised")
    with pytest.raises(ValueError, match="out of range"):
        board.set_wiring(8, "on")

    async def scenario() -> None:
        await board.start()
        with pytest.raises(RuntimeError, match="before start"):
            board.set_wiring(0, "off")
        await board.stop()

    run(scenario)
