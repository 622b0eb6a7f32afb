"""Store and forward: a disk-backed FIFO of batches that the database did not take (yet).

One SQLite file (WAL journal, ``synchronous=FULL``: every appended batch is fsynced before
``append`` returns, so a kill -9 or a power cut loses no batch the spool took)::

    batches(id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, bytes INTEGER, payload BLOB, run TEXT)
    rejected(id, n, reason TEXT, payload BLOB)   -- dead letters: refused for good (HTTP 400/413)

``payload`` is the batch as compact JSON rows ``[measurement, tag, unit, value, time_s, quality,
session, text, status]`` (floats round-trip exactly, NaN as ``NaN``; ``text`` and ``status`` only
when a point needs them, so rows spooled by an earlier version replay as they are). ``run`` is
the run of the process that recorded the batch: replayed by a later process, its derived points
keep the run they were recorded in. The file and a folder it creates are
owner-only (0600 / 0700 from creation): the spool is process data. Replay is strictly in ``id`` order: ``peek()`` gives the
oldest batch, ``ack(id)`` deletes it once the sink has stored it. A batch is deleted only after the
sink confirmed it, so a crash between the write and the ack can replay that one batch again: with
InfluxDB the replay overwrites the identical series+timestamp (no duplicate); within a process
the replay is exact (each batch written once).

Bounded: ``max_bytes`` of payload. Overflow policy: **drop the oldest batches** (keep the newest
data, like Telegraf's metric buffer), logging a warning with the number of points dropped; the
counters ``dropped_points`` and ``dropped_batches`` record it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from ..secrets import private_dir, private_file
from .base import Point

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL, bytes INTEGER NOT NULL,
    payload BLOB NOT NULL, run TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY, n INTEGER NOT NULL, reason TEXT NOT NULL, payload BLOB NOT NULL);
"""


def _row(p: Point) -> tuple:
    row = (p.measurement, p.tag, p.unit, p.value, p.time_s, p.quality, p.session)
    if p.status:
        return (*row, p.text, p.status)
    return (*row, p.text) if p.text else row


def dump_points(points: Sequence[Point]) -> bytes:
    return json.dumps([_row(p) for p in points], separators=(",", ":")).encode()


def load_points(payload: bytes) -> list[Point]:
    return [Point(*row) for row in json.loads(payload)]


class Spool:
    """Thread-safe, bounded, persistent FIFO of point batches."""

    def __init__(self, path: Path | str, max_bytes: int = 256 * 2**20):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        private_dir(self.path.parent)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(private_file(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        if "run" not in {row[1] for row in self._db.execute("PRAGMA table_info(batches)")}:
            self._db.execute("ALTER TABLE batches ADD COLUMN run TEXT NOT NULL DEFAULT ''")
        n, b, k = self._db.execute(
            "SELECT COALESCE(SUM(n),0), COALESCE(SUM(bytes),0), COUNT(*) FROM batches").fetchone()
        self.pending_points, self.bytes, self.pending_batches = int(n), int(b), int(k)
        self.dropped_points = 0
        self.dropped_batches = 0
        if self.pending_batches:
            log.info("spool %s: %d points in %d batches waiting from an earlier run",
                     self.path, self.pending_points, self.pending_batches)

    def __len__(self) -> int:
        return self.pending_batches

    def append(self, points: Sequence[Point], run: str = "") -> None:
        """Store a batch (fsynced before returning); ``run``: the run that recorded it."""
        if not points:
            return
        payload = dump_points(points)
        with self._lock:
            self._db.execute("INSERT INTO batches (n, bytes, payload, run) VALUES (?,?,?,?)",
                             (len(points), len(payload), payload, run))
            self.pending_points += len(points)
            self.bytes += len(payload)
            self.pending_batches += 1
            if self.bytes > self.max_bytes:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        dropped_n = dropped_k = 0
        rows = self._db.execute("SELECT id, n, bytes FROM batches ORDER BY id").fetchall()
        last_id = None
        for bid, n, b in rows[:-1]:  # never the batch just added
            if self.bytes <= self.max_bytes:
                break
            last_id, dropped_n, dropped_k = bid, dropped_n + n, dropped_k + 1
            self.bytes -= b
        if last_id is None:
            return
        self._db.execute("DELETE FROM batches WHERE id <= ?", (last_id,))
        self.pending_points -= dropped_n
        self.pending_batches -= dropped_k
        self.dropped_points += dropped_n
        self.dropped_batches += dropped_k
        log.warning("historian spool %s full (%.1f MiB): dropped the oldest %d points (%d batches)",
                    self.path, self.max_bytes / 2**20, dropped_n, dropped_k)

    def peek(self) -> tuple[int, list[Point], str] | None:
        """The oldest batch (id, points, run), or None when empty. It stays until ``ack``."""
        with self._lock:
            row = self._db.execute("SELECT id, payload, run FROM batches ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return None
        return int(row[0]), load_points(row[1]), row[2]

    def ack(self, batch_id: int) -> None:
        with self._lock:
            row = self._db.execute("SELECT n, bytes FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row is None:
                return
            self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
            self.pending_points -= row[0]
            self.bytes -= row[1]
            self.pending_batches -= 1

    def reject(self, batch_id: int, reason: str) -> None:
        """Move a batch the database refused for good to the dead-letter table."""
        with self._lock:
            row = self._db.execute("SELECT n, bytes, payload FROM batches WHERE id = ?",
                                   (batch_id,)).fetchone()
            if row is None:
                return
            self._db.execute("BEGIN")
            self._db.execute("INSERT INTO rejected VALUES (?,?,?,?)", (batch_id, row[0], reason, row[2]))
            self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
            self._db.execute("COMMIT")
            self.pending_points -= row[0]
            self.bytes -= row[1]
            self.pending_batches -= 1
        log.warning("historian: %d points refused for good (%s); kept in %s table 'rejected'",
                    row[0], reason, self.path)

    def put_aside(self, points: Sequence[Point], reason: str) -> None:
        """Store a refused batch directly as a dead letter."""
        payload = dump_points(points)
        with self._lock:
            self._db.execute("INSERT INTO rejected (n, reason, payload) VALUES (?,?,?)",
                             (len(points), reason, payload))
        log.warning("historian: %d points refused for good (%s); kept in %s table 'rejected'",
                    len(points), reason, self.path)

    def rejected_points(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(n),0) FROM rejected").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
