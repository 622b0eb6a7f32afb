"""The state of one link to a PLC, as small values: its status (``LinkStatus``), the estimate of
the PLC's clock used to time-stamp what the bridge says on the PLC's behalf (``PlcClock``), the
schedule of "still down" lines (``StillDown``), and the filter that keeps asyncua's own
connection noise off the console (the bridge reports a link loss itself).

The PLC clock: a PLC stamps its values with its own clock (SourceTimestamp), which need not agree
with ours (a simulated PLC runs its plant clock; a real one may be minutes off). When the link is
lost, the Bad samples that mark the gap are stamped ``last source time seen on that PLC + wall
seconds elapsed since it was seen``, so they sit on the PLC's time line beside its own values.
Before any value has been seen the estimate is the wall clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from asyncua import ua

#: elapsed seconds of an outage at which a "still down" line is logged; then every ``STILL_DOWN_EVERY_S``
STILL_DOWN_S: tuple[float, ...] = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STILL_DOWN_EVERY_S = 600.0


class LinkDown(Exception):
    """The link to a PLC is down, or the server is not the PLC expected (no such namespace)."""


#: what a failed connect or a lost link raises (a security refusal is a ``SecurityError`` instead)
NETWORK_ERRORS = (TimeoutError, OSError, ua.UaError, LinkDown, ConnectionError)


def describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class LinkStatus:
    """One PLC's link: ``up``; ``since`` (wall seconds) the last transition (or the start);
    ``outages`` begun so far (one PLC unreachable at the start counts one); ``reconnects``
    completed so far (an epoch: it grows by one each time the PLC is back, so a loop that saw
    ``reconnects`` change knows the PLC is fresh and re-reads what it writes); ``last_error`` of
    the latest failed connect or loss ("" when none)."""

    name: str
    up: bool
    since: float
    outages: int
    reconnects: int
    last_error: str


class PlcClock:
    """Estimate of a PLC's clock from the source times seen on it (see the module docstring)."""

    __slots__ = ("source", "wall")

    def __init__(self) -> None:
        self.source: float | None = None
        self.wall = 0.0

    def seen(self, source_time: float, wall: float, *, rebase: bool = False) -> None:
        """A value stamped ``source_time`` arrived at ``wall``. Within one session only a later
        source time moves the estimate (an unchanged value keeps its old stamp); ``rebase`` (the
        first values of a new session) takes it whatever it is: the PLC's clock may have stepped."""
        if rebase or self.source is None or source_time > self.source:
            self.source, self.wall = source_time, wall

    def now(self, wall: float | None = None) -> float:
        wall = time.time() if wall is None else wall
        return wall if self.source is None else self.source + (wall - self.wall)


class StillDown:
    """When to log "still down": once at each threshold of ``schedule`` (elapsed seconds of the
    outage), then every ``every_s``. ``due(elapsed)`` is True once per threshold crossed."""

    def __init__(self, schedule: Sequence[float] = STILL_DOWN_S, every_s: float = STILL_DOWN_EVERY_S):
        if not schedule or every_s <= 0:
            raise ValueError("StillDown needs at least one threshold and a positive repeat interval")
        self.schedule, self.every_s = tuple(sorted(schedule)), every_s
        self._next = self.schedule[0]
        self._i = 0

    def due(self, elapsed_s: float) -> bool:
        if elapsed_s < self._next:
            return False
        while self._next <= elapsed_s:
            self._i += 1
            self._next = (self.schedule[self._i] if self._i < len(self.schedule)
                          else self._next + self.every_s)
        return True


class LinkNoise(logging.Filter):
    """Drops asyncua's own lines below WARNING and its tracebacks and warnings about a closed
    connection: the bridge reports a link loss itself, with one line down and one line up."""

    PHRASES = ("onnection is closed", "Publish iteration crashed", "was called but connection is closed",
               "Connection lost", "connection_lost", "connection issue")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (ConnectionError, OSError, asyncio.TimeoutError)):
            return False
        msg = record.getMessage()
        return not any(p in msg for p in self.PHRASES)


NOISY_LOGGERS = ("asyncua.client.ua_session.UaSession", "asyncua.client.ua_client.UaClient",
                 "asyncua.client.ua_client.UASocketProtocol", "asyncua.client.client")


def install_noise_filter() -> None:
    for name in NOISY_LOGGERS:
        lg = logging.getLogger(name)
        if not any(isinstance(f, LinkNoise) for f in lg.filters):
            lg.addFilter(LinkNoise())
