"""Phidget22 relay boards over USB: the PhidgetInterfaceKit 0/0/8 (part 1017).

Each relay is a Phidget22 ``DigitalOutput`` channel 0..7 of the board, addressed
by ``setDeviceSerialNumber`` (only when ``serial`` is configured; otherwise the
first board found) and ``setChannel``. The 1017 is a plain USB device, not
VINT, so no hub port is set (reference/devices-and-apis.md section 5).

Wiring. ``Relay.set(on)`` speaks of the APPLIANCE (on = powered). Whether an
energised coil powers or cuts the appliance depends on how it is wired:
``energized_means = "on"`` (normally-open contact: energised = appliance on)
or ``"off"`` (normally-closed contact, as in the earlier prototype: energised =
appliance cut, so a dead controller or an unplugged board leaves the appliance
running). The gateway passes each load's ``energized_means`` before
``start()``, either as the ``wiring`` mapping of the constructor or with
``set_wiring(channel, energized_means)``; channels with no load default to
``"on"``. ``RelayState.on`` always reports the appliance, never the coil.

Threads. Every library call (create, open, setState, getState, close) runs on
this board's own small thread pool with a timeout, never on the event loop;
a dedicated pool keeps a hung USB call from starving the loop's default
executor. The library calls the attach, detach and error handlers on its own
threads: they only hand the event to the loop with ``call_soon_threadsafe``.

Lifecycle. ``start()`` returns at once and starts a supervisor task that opens
every channel with ``openWaitForAttachment(open_timeout_ms)``. A missing board
leaves its relays unavailable and is retried every ``retry_s``; it never
raises. Once open, a channel stays open across USB unplugs: the library
detaches and re-attaches it by itself and calls the handlers. On re-attach the
last state commanded successfully is applied again (a USB glitch or a power
cycle of the board drops every relay, and the user expects the appliance back
where the EMS left it); with no command yet, the board's state is read.
``stop()`` closes the channels; closing returns a 1017 relay to its default,
de-energised state.

Errors. ``PhidgetException`` is translated here: 52 NOTATTACHED, 56 CLOSED and
40 NODEV become ``DeviceUnavailable``, any other code ``DeviceError``, each
with the code, its name and the library's description. Relays measure no
power: ``power_kw`` stays None unless the gateway pairs them with a meter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import structlog
from Phidget22.ErrorCode import ErrorCode
from Phidget22.PhidgetException import PhidgetException

from gateway.devices.base import ChangeListener, Clock, MqttPort, NetMeter, Relay, RelayState
from gateway.errors import DeviceError, DeviceUnavailable

if TYPE_CHECKING:
    from gateway.config import DeviceSettings
    from gateway.profiles import PhidgetDigitalOutput

EnergizedMeans = Literal["on", "off"]
T = TypeVar("T")

# Codes meaning "the board is not there (any more)", not "the board refused".
_UNAVAILABLE_CODES = frozenset(
    {ErrorCode.EPHIDGET_NOTATTACHED, ErrorCode.EPHIDGET_CLOSED, ErrorCode.EPHIDGET_NODEV}
)


class DigitalOutputChannel(Protocol):
    """The part of ``Phidget22.Devices.DigitalOutput.DigitalOutput`` this driver uses.

    The names are the library's (camelCase); ``gateway.sim.phidget.FakeDigitalOutput``
    provides the same ones.
    """

    def setDeviceSerialNumber(self, serial: int) -> None: ...
    def setChannel(self, channel: int) -> None: ...
    def setOnAttachHandler(self, handler: Callable[[Any], None]) -> None: ...
    def setOnDetachHandler(self, handler: Callable[[Any], None]) -> None: ...
    def setOnErrorHandler(self, handler: Callable[[Any, int, str], None]) -> None: ...
    def openWaitForAttachment(self, timeout_ms: int) -> None: ...
    def setState(self, state: bool) -> None: ...
    def getState(self) -> bool: ...
    def close(self) -> None: ...


ChannelFactory = Callable[[], DigitalOutputChannel]


def _library_channel() -> DigitalOutputChannel:
    """A real library channel (loads ``libphidget22``, which needs libusb-1.0-0)."""
    # Load the native library through the wheel's own loader first: a missing
    # libusb then fails here with one OSError, not inside a half-built
    # DigitalOutput whose __del__ raises again.
    from Phidget22._phidget_support import PhidgetSupport

    PhidgetSupport.getDll()  # type: ignore[no-untyped-call]
    from Phidget22.Devices.DigitalOutput import DigitalOutput

    return DigitalOutput()


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"code {code}"


def _check_wiring(channel: int, energized_means: str, channels: int) -> EnergizedMeans:
    if not 0 <= channel < channels:
        raise ValueError(f"channel {channel} out of range 0..{channels - 1}")
    if energized_means == "on":
        return "on"
    if energized_means == "off":
        return "off"
    raise ValueError(f"energized_means must be 'on' or 'off', not {energized_means!r}")


@dataclass(slots=True)
class _Channel:
    number: int
    relay_id: str
    log: Any
    wiring: EnergizedMeans = "on"
    handle: DigitalOutputChannel | None = None
    is_open: bool = False
    attached: bool = False
    generation: int = 0  # bumped on every attach, so a stale sync is dropped
    desired_on: bool | None = None  # the last appliance state commanded successfully
    opening: asyncio.Future[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: RelayState = field(default_factory=RelayState)


class PhidgetRelay:
    """One relay of a ``PhidgetRelayBoard``, as the gateway's ``Relay``."""

    def __init__(self, board: PhidgetRelayBoard, channel: _Channel) -> None:
        self._board = board
        self._channel = channel

    @property
    def relay_id(self) -> str:
        return self._channel.relay_id

    @property
    def channel(self) -> int:
        return self._channel.number

    @property
    def energized_means(self) -> EnergizedMeans:
        return self._channel.wiring

    @property
    def state(self) -> RelayState:
        return self._channel.state

    async def set(self, on: bool) -> None:
        """Power the appliance (``on``) or cut it; ``DeviceError`` on failure or timeout."""
        await self._board.switch(self._channel.number, on)


class PhidgetRelayBoard:
    """A Phidget22 relay board (1017): one ``Relay`` per ``DigitalOutput`` channel.

    Built by the registry as ``cls(settings, profile, port, clock, on_change)``;
    ``port`` is unused (the board is on USB, not MQTT). Keyword-only extras:
    ``wiring`` maps channel -> ``energized_means`` (see the module docstring)
    and ``channel_factory`` builds the library's channel objects (tests and the
    demo pass ``gateway.sim.phidget.FakeBoard.digital_output``).
    """

    def __init__(
        self,
        settings: DeviceSettings,
        profile: PhidgetDigitalOutput,
        port: MqttPort | None,
        clock: Clock,
        on_change: ChangeListener,
        *,
        wiring: Mapping[int, str] | None = None,
        channel_factory: ChannelFactory | None = None,
    ) -> None:
        self.device_id = settings.id
        self._serial = settings.serial
        self._open_timeout_ms = settings.open_timeout_ms
        self._retry_s = settings.retry_s
        self._command_timeout_s = settings.command_timeout_s
        self._profile = profile
        self._clock = clock
        self._on_change = on_change
        self._factory: ChannelFactory = channel_factory or _library_channel
        self._log = structlog.get_logger(__name__).bind(
            device=self.device_id, serial=self._serial, model=profile.model
        )
        self._channels: dict[int, _Channel] = {}
        for n in range(profile.channels):
            relay_id = f"{self.device_id}/{n}"
            log = self._log.bind(channel=n, relay=relay_id)
            self._channels[n] = _Channel(number=n, relay_id=relay_id, log=log)
        self._relays: dict[int, Relay] = {
            n: PhidgetRelay(self, ch) for n, ch in self._channels.items()
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._missing_logged = False
        self.open_attempts = 0
        """How many times the supervisor tried to open the missing channels."""
        for n, means in (wiring or {}).items():
            self.set_wiring(n, means)

    # -- configuration -----------------------------------------------------------

    def set_wiring(self, channel: int, energized_means: str) -> None:
        """Declare how ``channel`` is wired: ``"on"`` (energised = appliance on) or ``"off"``.

        Call it before ``start()``, from the load's ``energized_means``;
        ``ValueError`` for a bad channel or value, ``RuntimeError`` once started
        (the relay's physical state would no longer match what was commanded).
        """
        means = _check_wiring(channel, energized_means, len(self._channels))
        if self._loop is not None:
            raise RuntimeError(f"{self.device_id}: set_wiring must be called before start()")
        self._channels[channel].wiring = means

    # -- Device ------------------------------------------------------------------

    def relays(self) -> dict[int, Relay]:
        return dict(self._relays)

    def net_meter(self) -> NetMeter | None:
        return None

    async def start(self) -> None:
        """Start the supervisor that opens the board and retries; returns at once, never raises."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        for ch in self._channels.values():
            ch.lock = asyncio.Lock()  # bound to this loop (a board may be restarted in tests)
        self._executor = ThreadPoolExecutor(
            max_workers=len(self._channels) + 1, thread_name_prefix=f"phidget-{self.device_id}"
        )
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"phidget-{self.device_id}-supervisor"
        )
        self._log.info(
            "phidget_board_starting",
            channels=len(self._channels),
            wiring={n: ch.wiring for n, ch in self._channels.items()},
        )

    async def stop(self) -> None:
        """Stop retrying, close every channel (each close bounded by ``command_timeout_s``)."""
        if self._loop is None or self._stopping:
            return
        self._stopping = True
        tasks = [t for t in (self._supervisor, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # An open still blocked in a worker thread would leave its channel open
        # after our close: let it finish (it is bounded by open_timeout_ms).
        openings = [ch.opening for ch in self._channels.values() if ch.opening is not None]
        if openings:
            await asyncio.wait(openings, timeout=self._open_limit_s())
        for ch in self._channels.values():
            if ch.opening is not None and ch.opening.done() and not ch.opening.cancelled():
                ch.opening.exception()  # retrieved: its failure was or will be logged
            ch.opening = None
        await asyncio.gather(*(self._close(ch) for ch in self._channels.values()))
        for ch in self._channels.values():
            ch.is_open = ch.attached = False
            ch.state.available = False
            ch.state.on = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self._supervisor = None
        self._loop = None
        self._log.info("phidget_board_stopped")

    # -- commands ----------------------------------------------------------------

    async def switch(self, channel: int, on: bool) -> None:
        """Power (``on``) or cut the appliance on ``channel``, through its wiring."""
        ch = self._channels[channel]
        if not ch.attached or self._stopping:
            raise DeviceUnavailable(
                f"{ch.relay_id}: Phidget board {self._serial_text()} is not attached",
                self.device_id,
                channel,
            )
        async with ch.lock:
            energise = self._energise(ch, on)
            try:
                await self._call(ch, "setState", energise)
            except DeviceError as exc:
                ch.log.warning("relay_switch_failed", on=on, energised=energise, error=str(exc))
                raise
            ch.desired_on = on
            changed = ch.state.on != on
            self._report(ch, on)
        ch.log.info("relay_switched", on=on, energised=energise, changed=changed)
        self._notify(ch)

    # -- the supervisor: open, retry -----------------------------------------------

    async def _supervise(self) -> None:
        while True:
            try:
                await self._open_missing()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._log.exception("phidget_supervisor_failed")
            await asyncio.sleep(self._retry_s)

    def _open_limit_s(self) -> float:
        return self._open_timeout_ms / 1000 + self._command_timeout_s

    async def _open_missing(self) -> None:
        missing = [ch for ch in self._channels.values() if not ch.is_open]
        if not missing:
            return
        self.open_attempts += 1
        for ch in missing:
            # Never start a second open while a previous one still blocks its thread.
            if ch.opening is None or ch.opening.done():
                ch.opening = asyncio.ensure_future(self._run(self._open_blocking, ch))
        futures = [ch.opening for ch in missing if ch.opening is not None]
        await asyncio.wait(futures, timeout=self._open_limit_s())
        failures: dict[tuple[str, int | None, str], list[int]] = {}
        key: tuple[str, int | None, str]
        for ch in missing:
            fut = ch.opening
            if fut is None or not fut.done():
                key = ("blocked", None, "open still blocked past its timeout")
                failures.setdefault(key, []).append(ch.number)
                continue
            exc = None if fut.cancelled() else fut.exception()
            ch.opening = None
            if exc is None:
                ch.is_open = True
                ch.log.info("phidget_channel_opened")
                continue
            if isinstance(exc, PhidgetException):
                key = ("phidget", int(exc.code), exc.description)
            elif isinstance(exc, OSError):
                key = ("library", None, f"{type(exc).__name__}: {exc}")
            else:
                key = ("unexpected", None, f"{type(exc).__name__}: {exc}")
            failures.setdefault(key, []).append(ch.number)
        if not failures:
            self._missing_logged = False
            return
        for (kind, code, description), channels in failures.items():
            self._log_open_failure(kind, code, description, channels)
        self._missing_logged = True

    def _log_open_failure(
        self, kind: str, code: int | None, description: str, channels: list[int]
    ) -> None:
        fields = {
            "code": code,
            "code_name": _code_name(code) if code is not None else None,
            "description": description,
            "channels": channels,
            "attempt": self.open_attempts,
            "retry_s": self._retry_s,
        }
        if code == ErrorCode.EPHIDGET_TIMEOUT:
            # The usual case of a board that is not plugged in: say it once, then quietly retry.
            level = self._log.debug if self._missing_logged else self._log.warning
            level("phidget_board_missing", timeout_ms=self._open_timeout_ms, **fields)
        elif kind == "library":
            # libphidget22.so is loaded on first use and links libusb-1.0.so.0.
            self._log.error(
                "phidget_library_unavailable",
                hint="libphidget22 needs libusb-1.0: apt-get install libusb-1.0-0",
                **fields,
            )
        else:
            self._log.error("phidget_open_failed", kind=kind, **fields)

    def _open_blocking(self, ch: _Channel) -> None:
        """In a worker thread: create the channel once, then wait for the board to attach."""
        if ch.handle is None:
            handle = self._factory()
            if self._serial is not None:
                handle.setDeviceSerialNumber(self._serial)
            handle.setChannel(ch.number)
            handle.setOnAttachHandler(self._library_handler(ch.number, attached=True))
            handle.setOnDetachHandler(self._library_handler(ch.number, attached=False))
            handle.setOnErrorHandler(self._library_error_handler(ch.number))
            ch.handle = handle
        ch.handle.openWaitForAttachment(self._open_timeout_ms)

    # -- events from the library's threads ------------------------------------------

    def _library_handler(self, channel: int, attached: bool) -> Callable[[Any], None]:
        def handler(_phidget: Any) -> None:
            self._post(self._on_attach_change, channel, attached)

        return handler

    def _library_error_handler(self, channel: int) -> Callable[[Any, int, str], None]:
        def handler(_phidget: Any, code: int, description: str) -> None:
            self._post(self._on_error_event, channel, int(code), str(description))

        return handler

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        """On a library thread: hand the event to the loop; never raise into the library."""
        loop = self._loop
        if loop is None or self._stopping:
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop is closed: the gateway is shutting down
        except Exception:
            self._log.exception("phidget_event_dropped", args=args)

    def _on_attach_change(self, channel: int, attached: bool) -> None:
        if self._stopping:
            return
        ch = self._channels[channel]
        if attached:
            ch.attached = True
            ch.generation += 1
            ch.log.info("phidget_channel_attached", reapply=ch.desired_on)
            self._spawn(self._sync(ch, ch.generation))
        else:
            was = ch.state.available
            ch.attached = False
            ch.state.available = False
            ch.state.on = None  # unknown until it is back (a 1017 drops its relays when unpowered)
            ch.state.updated_s = self._clock.monotonic()
            ch.log.warning("phidget_channel_detached", was_available=was)
            self._notify(ch)

    def _on_error_event(self, channel: int, code: int, description: str) -> None:
        self._channels[channel].log.warning(
            "phidget_error_event", code=code, description=description
        )

    async def _sync(self, ch: _Channel, generation: int) -> None:
        """After an attach: re-apply the last command, or read what the board has."""
        async with ch.lock:
            if not ch.attached or ch.generation != generation or self._stopping:
                return
            on: bool | None
            try:
                if ch.desired_on is not None:
                    await self._call(ch, "setState", self._energise(ch, ch.desired_on))
                    on = ch.desired_on
                    ch.log.info("relay_reapplied", on=on)
                else:
                    energised = await self._call(ch, "getState")
                    on = self._appliance_on(ch, bool(energised))
            except DeviceError as exc:
                ch.log.warning("relay_sync_failed", error=str(exc))
                on = None
            if not ch.attached or ch.generation != generation:
                return
            self._report(ch, on)
        self._notify(ch)

    # -- helpers -------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def _call(self, ch: _Channel, method: str, *args: Any) -> Any:
        """``handle.method(*args)`` in a worker thread, bounded, library errors translated."""
        handle = ch.handle
        if handle is None:
            raise DeviceUnavailable(f"{ch.relay_id}: channel not open", self.device_id, ch.number)
        try:
            return await asyncio.wait_for(
                self._run(getattr(handle, method), *args), self._command_timeout_s
            )
        except TimeoutError as exc:
            # The call may still complete later: the relay's state is unknown.
            ch.state.on = None
            raise DeviceError(
                f"{ch.relay_id}: {method} timed out after {self._command_timeout_s} s",
                self.device_id,
                ch.number,
            ) from exc
        except PhidgetException as exc:
            code = int(exc.code)
            cls = DeviceUnavailable if code in _UNAVAILABLE_CODES else DeviceError
            raise cls(
                f"{ch.relay_id}: {method} failed: PhidgetException {code} "
                f"{_code_name(code)} ({exc.description})",
                self.device_id,
                ch.number,
            ) from exc

    async def _close(self, ch: _Channel) -> None:
        if ch.handle is None:
            return
        try:
            await asyncio.wait_for(self._run(ch.handle.close), self._command_timeout_s)
        except (TimeoutError, PhidgetException) as exc:
            ch.log.warning("phidget_close_failed", error=str(exc).splitlines()[0])

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("phidget_task_failed", exc_info=task.exception())

    @staticmethod
    def _energise(ch: _Channel, on: bool) -> bool:
        return on if ch.wiring == "on" else not on

    @staticmethod
    def _appliance_on(ch: _Channel, energised: bool) -> bool:
        return energised if ch.wiring == "on" else not energised

    def _report(self, ch: _Channel, on: bool | None) -> None:
        ch.state.on = on
        ch.state.available = True
        ch.state.updated_s = self._clock.monotonic()

    def _notify(self, ch: _Channel) -> None:
        try:
            self._on_change(ch.relay_id)
        except Exception:
            ch.log.exception("on_change_failed")

    def _serial_text(self) -> str:
        return str(self._serial) if self._serial is not None else "(any serial)"
