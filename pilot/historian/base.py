"""The one small interface every historian sink implements (Telegraf-style lifecycle).

Lifecycle: ``open()`` once, then any number of ``write_batch()`` and ``flush()``, then
``close()``. ``write_batch`` either stores the whole batch or raises ``SinkError`` (the caller
keeps the batch: nothing is lost on a failed write). Sinks are synchronous; the recorder calls
them from its own worker so that the control loop never waits on I/O.

Schema (shared by every sink, see docs/historian.md):
- measurement: ``process`` (PLC tags), ``estimate``, ``decision`` (setpoints/MPC),
  ``alarm`` (alarm/event transitions), ``kpi``;
- tags (low cardinality): ``unit`` (plant unit), ``tag`` (tag name), ``quality``
  (good / uncertain / bad), and ``session`` (training sessions only);
- one float field ``value`` (absent when the point has no finite value: a Bad sample), an integer
  field ``status`` (the OPC UA StatusCode, when not Good), a string field ``text`` when set, and
  on derived measurements the tag ``run`` (the recording process); the timestamp is the source
  time, Unix seconds.

``write_batch(points, run="")``: ``run`` is the run that recorded the batch (a replayed batch
keeps its own); sinks tag the derived measurements with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twin.signals import MEASUREMENTS, Point  # noqa: F401  (the sinks' record, defined beside Sample)


class SinkError(RuntimeError):
    """A batch was not stored (server unreachable, refused, disk full). The batch is intact."""


class Sink(Protocol):
    def open(self) -> None: ...

    def write_batch(self, points: Sequence[Point], run: str = "") -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...
