"""The recorder: batches points, writes them from a worker thread, never blocks the control loop.

    caller ──record()/record_many()──▶ open batch ──(batch_size reached or flush_interval_s)──▶
    queue (bounded: max_queued_points) ──▶ worker ──write_batch──▶ sink
                         │ overflow                    │ SinkError (outage, refusal)
                         ▼                             ▼
                       spool ◀─────────────────────── spool ──(replayed first, in order)──▶ sink

- The caller only appends to a list under a lock; when the queue already holds
  ``max_queued_points`` the new batch goes straight to the spool (a disk append), so a stuck
  database never stalls the loop.
- Order: while the spool holds anything, new batches are appended behind it and the worker
  replays from the spool's head, so the database sees batches in recording order.
- Outage: the first failed write puts the batch in the spool and starts a back-off
  (``retry_min_s`` doubling to ``retry_max_s``); the worker then probes with the spool's oldest
  batch. ``PointsRejected`` (HTTP 400/413) moves a batch to the dead letters instead.
- Without a disk spool, ``MemorySpool`` keeps failed batches in memory (bounded, oldest dropped).
- Counters (``counters()``): recorded, written (confirmed by the sink), spooled, replayed,
  dropped by reason, backlog (not yet stored) and inherited (found in the disk spool at start);
  ``recorded + inherited == written + sum(dropped) + backlog`` whenever they are read: every
  change of a point's place happens under one lock (``_count``), which ``counters()`` takes too.
- Run: ``run_id`` goes with every batch (into the spool too) to the sink, which tags the derived
  measurements with it (``lineproto.DERIVED``): a restarted process never overwrites the points
  of a dead one.
- Pipelining: for sinks that expose ``encode(points) -> bytes`` and ``write_body(bytes)`` (the
  InfluxDB sinks) the worker encodes batch n+1 while a sender thread has batch n on the wire
  (one request in flight, so writes stay in order), yielding the GIL between encode slices.
  Measured: the recorder keeps up with a plain POST of pre-built line protocol
  (``benchmarks/historian_write.py``, numbers in docs/historian.md).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..secrets import redact_text
from .base import Point, Sink, SinkError
from .influx1 import PointsRejected
from .spool import Spool

log = logging.getLogger(__name__)

ENCODE_SLICE = 500  # points encoded between two GIL yields (~0.5 ms)


class MemorySpool:
    """In-memory stand-in for ``Spool`` (same interface, bounded by points, drops the oldest)."""

    def __init__(self, max_points: int = 1_000_000):
        self.max_points = max_points
        self._q: collections.deque[tuple[int, list[Point], str]] = collections.deque()
        self._next = 0
        self._lock = threading.Lock()
        self.pending_points = self.dropped_points = self.dropped_batches = 0
        self.lost_at_close = 0

    def __len__(self) -> int:
        return len(self._q)

    def append(self, points: Sequence[Point], run: str = "") -> None:
        with self._lock:
            self._next += 1
            self._q.append((self._next, list(points), run))
            self.pending_points += len(points)
            while self.pending_points > self.max_points and len(self._q) > 1:
                _, old, _ = self._q.popleft()
                self.pending_points -= len(old)
                self.dropped_points += len(old)
                self.dropped_batches += 1
                log.warning("historian memory spool full: dropped the oldest %d points", len(old))

    def peek(self) -> tuple[int, list[Point], str] | None:
        with self._lock:
            return self._q[0] if self._q else None

    def ack(self, batch_id: int) -> None:
        with self._lock:
            if self._q and self._q[0][0] == batch_id:
                self.pending_points -= len(self._q.popleft()[1])

    def reject(self, batch_id: int, reason: str) -> None:
        log.warning("historian: batch refused for good and dropped (%s)", reason)
        self.ack(batch_id)

    def put_aside(self, points: Sequence[Point], reason: str) -> None:
        log.warning("historian: %d points refused for good and dropped (%s)", len(points), reason)

    def close(self) -> None:
        with self._lock:
            if self._q:
                log.warning("historian: %d points still in the memory spool are lost", self.pending_points)
            self.lost_at_close += self.pending_points
            self.pending_points = 0
            self._q.clear()


@dataclass
class RecorderStats:
    recorded: int = 0  # points handed to record()
    written: int = 0  # points the sink stored (live + replayed)
    replayed: int = 0  # of which from the spool
    spooled: int = 0  # points that went to the spool (outage or overflow)
    rejected: int = 0  # points refused for good (dead letters)
    write_errors: int = 0


DROP_REFUSED = "refused by the database (dead letters)"
DROP_SPOOL_FULL = "spool full (oldest dropped)"
DROP_AT_CLOSE = "in the memory spool at close"


class Recorder:
    """Batching, non-blocking front of a ``Sink`` with store and forward."""

    def __init__(self, sink: Sink, spool: Spool | MemorySpool | None = None, *,
                 batch_size: int = 5000, flush_interval_s: float = 1.0,
                 max_queued_points: int = 500_000, retry_min_s: float = 0.5, retry_max_s: float = 5.0,
                 run_id: str = ""):
        if batch_size < 1 or flush_interval_s <= 0 or max_queued_points < batch_size:
            raise ValueError("need batch_size >= 1, flush_interval_s > 0, max_queued_points >= batch_size")
        self.sink = sink
        self.spool = spool if spool is not None else MemorySpool()
        self.run_id = run_id
        self.batch_size, self.flush_interval_s = batch_size, flush_interval_s
        self.max_queued_points = max_queued_points
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.stats = RecorderStats()
        self.inherited = self.spool.pending_points  # an earlier run's points, waiting in the disk spool
        self._open: list[Point] = []
        self._open_since = 0.0
        self._queue: collections.deque[tuple[int, list[Point]]] = collections.deque()
        self._queued_points = 0
        self._held = 0  # points the worker took from the queue and has not settled yet
        self._seq = self._done = 0
        self._cond = threading.Condition()
        self._count = threading.Lock()  # taken after _cond, never before: points changing place
        self._stop = False
        self._retry_at = 0.0
        self._backoff = retry_min_s
        self._thread: threading.Thread | None = None
        self._pipelined = hasattr(sink, "encode") and hasattr(sink, "write_body")
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="historian-send") if self._pipelined else None
        self._inflight: tuple[int, list[Point], Future] | None = None

    # -- caller side ---------------------------------------------------------------------
    def start(self) -> Recorder:
        self.sink.open()
        self._thread = threading.Thread(target=self._run, name="historian-recorder", daemon=True)
        self._thread.start()
        return self

    def record(self, point: Point) -> None:
        self.record_many((point,))

    def record_many(self, points: Iterable[Point]) -> None:
        """Queue points; returns at once (the worker writes them)."""
        with self._cond:
            if not self._open:
                self._open_since = time.monotonic()
            n0 = len(self._open)
            self._open.extend(points)
            self.stats.recorded += len(self._open) - n0
            while len(self._open) >= self.batch_size:
                batch, self._open = self._open[: self.batch_size], self._open[self.batch_size:]
                self._hand_over(batch)

    def commit(self) -> None:
        """The open batch leaves now (returns at once): call it at the end of a control tick, so
        that a process killed afterwards loses at most the tick in flight."""
        with self._cond:
            if self._open:
                self._hand_over(self._open)
                self._open = []

    def _hand_over(self, batch: list[Point]) -> None:
        """Called with the lock held."""
        if self._queued_points + len(batch) > self.max_queued_points:
            with self._count:  # overflow: the spool takes it, the caller does not wait
                self.spool.append(batch, self.run_id)
                self.stats.spooled += len(batch)
            return
        self._seq += 1
        self._queue.append((self._seq, batch))
        self._queued_points += len(batch)
        self._cond.notify()

    def counters(self) -> dict:
        """Where every point handed in is (JSON-ready; see the module docstring)."""
        with self._cond, self._count:
            st, sp = self.stats, self.spool
            dropped = {DROP_REFUSED: st.rejected, DROP_SPOOL_FULL: sp.dropped_points,
                       DROP_AT_CLOSE: getattr(sp, "lost_at_close", 0)}
            backlog = len(self._open) + self._queued_points + self._held + sp.pending_points
            return {"run": self.run_id, "recorded": st.recorded, "written": st.written, "spooled": st.spooled,
                    "replayed": st.replayed, "dropped": {k: n for k, n in dropped.items() if n},
                    "backlog": backlog, "inherited": self.inherited}

    def flush(self, timeout_s: float | None = None) -> bool:
        """Hand over the open batch and wait until every queued batch is written or spooled."""
        with self._cond:
            if self._open:
                self._hand_over(self._open)
                self._open = []
            target = self._seq
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._done >= target or self._stop, timeout_s)

    def drain(self, timeout_s: float) -> bool:
        """Flush, then wait until the spool is empty too (the database took everything)."""
        deadline = time.monotonic() + timeout_s
        if not self.flush(timeout_s):
            return False
        with self._cond:
            self._retry_at = 0.0
            self._cond.notify_all()
        while len(self.spool):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what can be written; what cannot stays in the (disk) spool for the next run."""
        self.flush(timeout_s)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._cond, self._count:  # the worker is gone: whatever is left goes to the spool
            for _, batch in self._queue:
                self.spool.append(batch, self.run_id)
                self.stats.spooled += len(batch)
            self._queue.clear()
            self._queued_points = 0
        if self._sender is not None:
            self._sender.shutdown(wait=True)
        self.sink.close()
        with self._count:
            self.spool.close()

    # -- worker --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                item = self._next_live()
            if item is None:
                self._settle()
                if self._stop and not self._queue:
                    return
            if item is not None:
                self._write_live(*item)
            elif len(self.spool) and time.monotonic() >= self._retry_at:
                self._replay_one()
            else:
                with self._cond:
                    if not self._queue and not self._stop:
                        self._cond.wait(self._wait_s())

    def _next_live(self) -> tuple[int, list[Point]] | None:
        """Called with the lock held: a queued batch, or the open one if it is old enough."""
        if not self._queue and self._open and time.monotonic() - self._open_since >= self.flush_interval_s:
            self._hand_over(self._open)
            self._open = []
        if not self._queue:
            return None
        seq, batch = self._queue.popleft()
        with self._count:
            self._queued_points -= len(batch)
            self._held += len(batch)
        return seq, batch

    def _wait_s(self) -> float:
        now = time.monotonic()
        waits = [self.flush_interval_s]
        if len(self.spool):
            waits.append(max(0.01, self._retry_at - now))
        if self._open:
            waits.append(max(0.01, self._open_since + self.flush_interval_s - now))
        return min(waits)

    def _write_live(self, seq: int, batch: list[Point]) -> None:
        """Encode this batch while the previous one is on the wire (one request in flight)."""
        body = None
        if self._pipelined and not len(self.spool) and time.monotonic() >= self._retry_at:
            body = self._encode(batch)
        self._settle()
        if len(self.spool) or time.monotonic() < self._retry_at:
            self._to_spool(batch)  # keep the order: behind what is already waiting
            self._mark_done(seq)
        elif body is not None:
            self._inflight = (seq, batch, self._sender.submit(self.sink.write_body, body))
        else:
            self._settle_one(seq, batch, self._call(self._write_batch, batch))

    def _write_batch(self, batch: list[Point], run: str | None = None) -> None:
        run = self.run_id if run is None else run
        if run:
            self.sink.write_batch(batch, run=run)
        else:
            self.sink.write_batch(batch)

    def _encode(self, batch: list[Point]) -> bytes:
        """Encode in slices, yielding the GIL between them: the sender thread, whose response has
        arrived, gets it back at once instead of after the 5 ms switch interval (measured: that
        convoy alone cost ~20 % of the write rate)."""
        parts = []
        for i in range(0, len(batch), ENCODE_SLICE):
            part = self.sink.encode(batch[i:i + ENCODE_SLICE], self.run_id)
            if part:
                parts.append(part)
            time.sleep(0)
        return b"\n".join(parts)

    @staticmethod
    def _call(fn, arg) -> Exception | None:
        try:
            fn(arg)
        except SinkError as exc:
            return exc
        return None

    def _settle(self) -> None:
        """Wait for the request in flight, if any, and account for it."""
        if self._inflight is None:
            return
        seq, batch, fut = self._inflight
        self._inflight = None
        self._settle_one(seq, batch, fut.exception())

    def _settle_one(self, seq: int, batch: list[Point], exc: BaseException | None) -> None:
        if exc is None:
            with self._count:
                self._held -= len(batch)
                self.stats.written += len(batch)
        elif isinstance(exc, PointsRejected):
            with self._count:
                self.spool.put_aside(batch, str(exc))
                self._held -= len(batch)
                self.stats.rejected += len(batch)
        elif isinstance(exc, SinkError):
            self._failed(exc)
            self._to_spool(batch)
        else:
            raise exc
        self._mark_done(seq)

    def _to_spool(self, batch: list[Point]) -> None:
        """A batch the worker holds goes to the spool (fsynced there when it is the disk spool)."""
        with self._count:
            self.spool.append(batch, self.run_id)
            self._held -= len(batch)
            self.stats.spooled += len(batch)

    def _mark_done(self, seq: int) -> None:
        with self._cond:
            self._done = max(self._done, seq)
            self._cond.notify_all()

    def _replay_one(self) -> None:
        item = self.spool.peek()
        if item is None:
            return
        bid, batch, run = item
        try:
            self._write_batch(batch, run)
        except PointsRejected as exc:
            with self._count:
                self.spool.reject(bid, str(exc))
                self.stats.rejected += len(batch)
            return
        except SinkError as exc:
            self._failed(exc)
            return
        with self._count:
            self.spool.ack(bid)
            self.stats.written += len(batch)
            self.stats.replayed += len(batch)
        if self._backoff > self.retry_min_s:
            log.info("historian: database back, replaying the spool (%d batches left)", len(self.spool))
        self._backoff = self.retry_min_s

    def _failed(self, exc: SinkError) -> None:
        self.stats.write_errors += 1
        if self._backoff == self.retry_min_s:
            log.warning("historian: write failed, spooling until the database is back: %s",
                        redact_text(str(exc)))
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self.retry_max_s, self._backoff * 2)
