"""A stand-in for a Phidget 1017 relay board on USB, behind the Phidget22 API.

Phidget22 has no public virtual-device API (reference/devices-and-apis.md
section 5, "Simulation"), so this fakes the one hardware-facing object the
driver uses: ``FakeDigitalOutput`` has the methods of
``Phidget22.Devices.DigitalOutput.DigitalOutput`` that
``gateway.devices.phidget`` calls, and behaves as the library does:

- ``openWaitForAttachment(ms)`` blocks until a matching board is plugged in
  (serial and a free channel), fires the attach handler from another thread
  and returns; after ``ms`` it raises the real ``PhidgetException`` with code
  3 ``EPHIDGET_TIMEOUT`` and leaves the channel closed. On an already open
  channel it returns at once, as the real one does.
- ``setState``/``getState`` on a channel that is not attached raise code 52
  ``EPHIDGET_NOTATTACHED``.
- An open channel stays open across an unplug: ``FakeBoard.unplug()`` fires
  the detach handlers and ``plug()`` the attach handlers, each from a
  dispatch thread, as the library's own threads do.
- The 1017 is powered by USB: unplugging drops every relay; ``close()``
  returns the channel's relay to its default, de-energised state.

``FakeBoard`` is the hardware: it records each relay's coil (energised or
not) and every call with the calling thread, and can inject a failure or a
stall into the next call of a method. Use ``board.digital_output`` as the
driver's ``channel_factory``::

    board = FakeBoard(serial=123456, plugged=True)
    device = PhidgetRelayBoard(settings, profile, None, clock, on_change,
                               channel_factory=board.digital_output)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from Phidget22.ErrorCode import ErrorCode
from Phidget22.PhidgetException import PhidgetException

ANY_SERIAL_NUMBER = -1  # Phidget.ANY_SERIAL_NUMBER
ANY_CHANNEL = -1  # Phidget.ANY_CHANNEL
PHIDID_1017 = 12

_NO_DEVICE_DETAILS = (
    "No Phidgets were detected at all. Make sure your device is attached.\n"
    "Try using a longer timeout, at least 1000 milliseconds, to ensure reliable matching."
)


def phidget_error(code: int, details: str = "") -> PhidgetException:
    """A real ``PhidgetException`` for ``code`` (its description comes from libphidget22)."""
    exc = PhidgetException(code)
    if details:
        exc.details = details
    return exc


@dataclass(frozen=True, slots=True)
class FakeCall:
    """One call into the fake library: which method, on which channel, from which thread."""

    method: str
    channel: int
    thread_id: int
    args: tuple[Any, ...] = ()


@dataclass(slots=True)
class _Fault:
    method: str
    channel: int | None
    code: int | None
    stall_s: float


class FakeBoard:
    """The USB hardware of one 1017 board: ``channels`` relays, pluggable."""

    def __init__(self, serial: int, *, channels: int = 8, plugged: bool = False) -> None:
        self.serial = serial
        self.channels = channels
        self.device_id = PHIDID_1017
        self._cond = threading.Condition()
        self._plugged = plugged
        self._energised = [False] * channels
        self._owners: dict[int, FakeDigitalOutput] = {}  # channel -> the open handle
        self._faults: list[_Fault] = []
        self.calls: list[FakeCall] = []

    # -- what a test looks at ------------------------------------------------------

    @property
    def plugged(self) -> bool:
        return self._plugged

    def energised(self, channel: int) -> bool:
        """Whether relay ``channel``'s coil is energised now."""
        with self._cond:
            return self._energised[channel]

    @property
    def coils(self) -> tuple[bool, ...]:
        """Every relay's coil, channel 0 first."""
        with self._cond:
            return tuple(self._energised)

    def thread_ids(self) -> set[int]:
        """The threads that called into the fake library."""
        with self._cond:
            return {c.thread_id for c in self.calls}

    # -- what a test does --------------------------------------------------------------

    def digital_output(self) -> FakeDigitalOutput:
        """A new, unopened channel object on this board's USB bus (the driver's factory)."""
        return FakeDigitalOutput(self)

    def plug(self, wait: bool = True) -> None:
        """Plug the board in: open channels attach (handlers fire on a dispatch thread)."""
        with self._cond:
            if self._plugged:
                return
            self._plugged = True
            handles = list(self._owners.values())
            for h in handles:
                h._attached = True
            self._cond.notify_all()
        self._dispatch([h._attach_handler_call() for h in handles], wait)

    def unplug(self, wait: bool = True) -> None:
        """Pull the cable: every relay drops, open channels detach (they stay open)."""
        with self._cond:
            if not self._plugged:
                return
            self._plugged = False
            self._energised = [False] * self.channels
            handles = list(self._owners.values())
            for h in handles:
                h._attached = False
        self._dispatch([h._detach_handler_call() for h in handles], wait)

    def fail_next(
        self, method: str, code: int = ErrorCode.EPHIDGET_IO, channel: int | None = None
    ) -> None:
        """Make the next call of ``method`` (on ``channel``, or any) raise ``code``."""
        with self._cond:
            self._faults.append(_Fault(method, channel, int(code), 0.0))

    def stall_next(self, method: str, seconds: float, channel: int | None = None) -> None:
        """Make the next call of ``method`` block ``seconds`` first (a hung USB transfer)."""
        with self._cond:
            self._faults.append(_Fault(method, channel, None, seconds))

    def error_event(self, channel: int, code: int, description: str, wait: bool = True) -> None:
        """Fire the error handler of ``channel`` as the library does (e.g. 4104 BADPOWER)."""
        with self._cond:
            handle = self._owners.get(channel)
        if handle is not None and handle._on_error is not None:
            handler = handle._on_error
            self._dispatch([lambda: handler(handle, code, description)], wait)

    # -- used by FakeDigitalOutput -------------------------------------------------------

    def _record(self, method: str, channel: int, *args: Any) -> None:
        with self._cond:
            self.calls.append(FakeCall(method, channel, threading.get_ident(), args))

    def _fault(self, method: str, channel: int) -> None:
        """Apply the first fault injected for this call: stall and/or raise."""
        with self._cond:
            for i, f in enumerate(self._faults):
                if f.method == method and f.channel in (None, channel):
                    fault = self._faults.pop(i)
                    break
            else:
                return
        if fault.stall_s:
            time.sleep(fault.stall_s)
        if fault.code is not None:
            raise phidget_error(fault.code)

    @staticmethod
    def _dispatch(calls: list[Callable[[], None]], wait: bool) -> None:
        """Run handlers on another thread, as the library's dispatch thread does."""
        if not calls:
            return

        def run() -> None:
            for call in calls:
                call()

        thread = threading.Thread(target=run, name="fake-phidget-dispatch", daemon=True)
        thread.start()
        if wait:
            thread.join()


class FakeDigitalOutput:
    """What ``Phidget22.Devices.DigitalOutput.DigitalOutput`` is to the driver, on a FakeBoard."""

    def __init__(self, board: FakeBoard) -> None:
        self._board = board
        self._serial = ANY_SERIAL_NUMBER
        self._channel = ANY_CHANNEL
        self._bound: int | None = None  # the channel matched at open
        self._open = False
        self._attached = False
        self._on_attach: Callable[[Any], None] | None = None
        self._on_detach: Callable[[Any], None] | None = None
        self._on_error: Callable[[Any, int, str], None] | None = None

    # addressing, handlers --------------------------------------------------------------

    def setDeviceSerialNumber(self, serial: int) -> None:
        self._board._record("setDeviceSerialNumber", self._channel, serial)
        self._serial = int(serial)

    def getDeviceSerialNumber(self) -> int:
        return self._board.serial if self._bound is not None else self._serial

    def setChannel(self, channel: int) -> None:
        self._board._record("setChannel", channel, channel)
        self._channel = int(channel)

    def getChannel(self) -> int:
        return self._bound if self._bound is not None else self._channel

    def setIsHubPortDevice(self, value: bool) -> None:
        self._board._record("setIsHubPortDevice", self._channel, value)

    def getDeviceID(self) -> int:
        return self._board.device_id

    def setOnAttachHandler(self, handler: Callable[[Any], None]) -> None:
        self._board._record("setOnAttachHandler", self._channel)
        self._on_attach = handler

    def setOnDetachHandler(self, handler: Callable[[Any], None]) -> None:
        self._board._record("setOnDetachHandler", self._channel)
        self._on_detach = handler

    def setOnErrorHandler(self, handler: Callable[[Any, int, str], None]) -> None:
        self._board._record("setOnErrorHandler", self._channel)
        self._on_error = handler

    # open / close ----------------------------------------------------------------------

    def openWaitForAttachment(self, timeout_ms: int) -> None:
        board = self._board
        board._record("openWaitForAttachment", self._channel, timeout_ms)
        board._fault("openWaitForAttachment", self._channel)
        if self._open:
            return  # the real library returns at once on an open channel
        deadline = None if timeout_ms == 0 else time.monotonic() + timeout_ms / 1000
        with board._cond:
            while (channel := self._match()) is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    details = "" if board._plugged else _NO_DEVICE_DETAILS
                    raise phidget_error(ErrorCode.EPHIDGET_TIMEOUT, details)
                board._cond.wait(remaining)
            self._bound = channel
            self._open = self._attached = True
            board._owners[channel] = self
        # The library runs the attach handler before openWaitForAttachment returns.
        board._dispatch([self._attach_handler_call()], wait=True)

    def getIsOpen(self) -> bool:
        return self._open

    def getAttached(self) -> bool:
        self._board._record("getAttached", self.getChannel())
        return self._open and self._attached

    def close(self) -> None:
        board = self._board
        board._record("close", self.getChannel())
        board._fault("close", self.getChannel())
        with board._cond:
            if not self._open:
                return
            was_attached = self._attached
            channel = self._bound
            if channel is not None:
                board._owners.pop(channel, None)
                if was_attached:
                    board._energised[channel] = False  # back to the default state
            self._open = self._attached = False
            self._bound = None
            board._cond.notify_all()
        if was_attached:
            board._dispatch([self._detach_handler_call()], wait=True)

    # state --------------------------------------------------------------------------

    def setState(self, state: bool) -> None:
        board = self._board
        channel = self.getChannel()
        board._record("setState", channel, state)
        board._fault("setState", channel)
        with board._cond:
            self._check_attached()
            board._energised[channel] = bool(state)

    def getState(self) -> bool:
        board = self._board
        channel = self.getChannel()
        board._record("getState", channel)
        board._fault("getState", channel)
        with board._cond:
            self._check_attached()
            return board._energised[channel]

    # internals ----------------------------------------------------------------------

    def _match(self) -> int | None:
        """The channel this object would attach to now (board lock held), or None."""
        board = self._board
        if not board._plugged or self._serial not in (ANY_SERIAL_NUMBER, board.serial):
            return None
        wanted = range(board.channels) if self._channel == ANY_CHANNEL else [self._channel]
        return next((c for c in wanted if 0 <= c < board.channels and c not in board._owners), None)

    def _check_attached(self) -> None:
        if not (self._open and self._attached):
            raise phidget_error(ErrorCode.EPHIDGET_NOTATTACHED)

    def _attach_handler_call(self) -> Callable[[], None]:
        handler = self._on_attach
        return (lambda: handler(self)) if handler is not None else (lambda: None)

    def _detach_handler_call(self) -> Callable[[], None]:
        handler = self._on_detach
        return (lambda: handler(self)) if handler is not None else (lambda: None)
