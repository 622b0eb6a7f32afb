"""The embedded historian: one SQLite file per run (``DIR/history.sqlite``), no server needed.

Schema (same measurements and tags as the InfluxDB sinks, see ``base.py``)::

    CREATE TABLE points (
        measurement TEXT, tag TEXT, unit TEXT, quality TEXT, session TEXT,
        time_s REAL,   -- source time, seconds (plant clock in standalone runs)
        value REAL,    -- NULL: no value (a Bad sample, or a non-finite value)
        text TEXT NOT NULL DEFAULT '',    -- free text (operator actions), '' for most points
        status INTEGER NOT NULL DEFAULT 0,  -- OPC UA StatusCode of the sample (0: Good)
        run TEXT NOT NULL DEFAULT '');    -- run of the recording process (derived measurements)
    CREATE INDEX points_tag_time ON points (tag, time_s);

A store written before ``text``, ``status`` or ``run`` existed still opens: the columns are added
on ``open()``. The index is kept at every insert by default; a run written start to end and read
after (``pilot simulate``) passes ``index_at_close=True``: ``close()`` builds it in one sort
instead (with ``durable=False`` as well, ×3–4 less recording time on a plant day, measured in
docs/historian.md). A reader that finds a store without the index (its writer was killed before
``close()``) builds it on opening, or, when it cannot (a read-only file, a writer holding the
lock), reads without it: every reader finds every row either way. A ``process`` sample is stored once
(``twin.points.FreshPoints``: an analyser's assay passed again at every scan, same source time, is
not a new row). Written in batches inside one transaction each (WAL journal, ``synchronous=FULL``:
a batch the sink confirmed survives a power cut; ``durable=False``: ``synchronous=NORMAL``, still
never corrupted, but the last batches before a power cut may be lost, which a standalone run that
dies with the machine loses anyway), read back with ``read_series`` and
``read_points`` (a NULL value reads as NaN). Any SQLite tool opens it: ``sqlite3 DIR/history.sqlite "select * from points
where tag=..."``. The file is created owner-only (0600; SQLite gives its ``-wal`` and ``-shm``
the same mode): it is process data.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin.points import FreshPoints

from ..secrets import private_file
from .base import Point, SinkError
from .lineproto import DERIVED

log = logging.getLogger(__name__)
FILE_NAME = "history.sqlite"

_COLUMNS = "measurement, tag, unit, quality, session, time_s, value, text, status"
_ADDED = {"text": "TEXT NOT NULL DEFAULT ''", "status": "INTEGER NOT NULL DEFAULT 0",
          "run": "TEXT NOT NULL DEFAULT ''"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    measurement TEXT NOT NULL, tag TEXT NOT NULL, unit TEXT NOT NULL,
    quality TEXT NOT NULL, session TEXT NOT NULL, time_s REAL NOT NULL, value REAL,
    text TEXT NOT NULL DEFAULT '', status INTEGER NOT NULL DEFAULT 0, run TEXT NOT NULL DEFAULT '');
"""
INDEX_NAME = "points_tag_time"
_INDEX = f"CREATE INDEX IF NOT EXISTS {INDEX_NAME} ON points (tag, time_s)"


@dataclass(frozen=True)
class Series:
    tag: str
    time_s: np.ndarray
    value: np.ndarray
    quality: tuple[str, ...]


class SqliteSink:
    """Sink into an SQLite file (created with its parent folder if missing). ``index_at_close``:
    the (tag, time) index is built by ``close()``, not kept at every insert; ``durable=False``:
    ``synchronous=NORMAL`` (see the module docstring)."""

    def __init__(self, path: Path | str, *, index_at_close: bool = False, durable: bool = True):
        self.path = Path(path)
        self.index_at_close, self.durable = index_at_close, durable
        self._db: sqlite3.Connection | None = None
        self._fresh = FreshPoints()  # a sample is one row, however often a writer passes it

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(private_file(self.path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        if not self.index_at_close:
            self._db.execute(_INDEX)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(points)")}
        for name, decl in _ADDED.items():  # a store from before these columns
            if name not in columns:
                self._db.execute(f"ALTER TABLE points ADD COLUMN {name} {decl}")

    def write_batch(self, points: Sequence[Point], run: str = "") -> None:
        """Store the batch; ``run`` goes on the derived measurements (``lineproto.DERIVED``), a
        non-finite value is stored as NULL."""
        if self._db is None:
            raise SinkError(f"{self.path}: write before open()")
        seen = self._fresh.seen()
        rows = [(p.measurement, p.tag, p.unit, p.quality, p.session, p.time_s,
                 p.value if math.isfinite(p.value) else None, p.text, int(p.status),
                 run if p.measurement in DERIVED else "") for p in self._fresh(points)]
        try:
            with self._db:
                self._db.executemany(f"INSERT INTO points ({_COLUMNS}, run) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        except sqlite3.Error as exc:
            self._fresh.forget_since(seen)  # not stored: the batch comes again (spool replay)
            raise SinkError(f"{self.path}: {exc}") from exc

    def flush(self) -> None:
        if self._db is not None:
            self._db.commit()

    def close(self) -> None:
        """Commit, build the index if it was left to now (a store that cannot take it keeps its
        rows: its next reader builds it), close."""
        if self._db is not None:
            try:
                self._db.commit()
                with self._db:
                    self._db.execute(_INDEX)
            except sqlite3.Error as exc:
                log.warning("%s: the (tag, time) index could not be built at close (%s); "
                            "its next reader builds it", self.path, exc)
            finally:
                self._db.close()
                self._db = None


def has_index(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
                      (INDEX_NAME,)).fetchone() is not None


def _build_index(path: Path) -> None:
    """Build the missing index of a store whose writer never closed it; a store that cannot take
    it now (read-only, locked by a writer, not a store) is read without it."""
    try:
        with closing(sqlite3.connect(path, timeout=0.0)) as db, db:
            db.execute(_INDEX)
        log.info("%s: built its missing (tag, time) index", path)
    except sqlite3.Error as exc:
        log.info("%s has no (tag, time) index and cannot take one now (%s): reading without it", path, exc)


def _connect_ro(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FileNotFoundError(f"no historian file at {path}")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        indexed = has_index(db)
    except sqlite3.Error:
        indexed = True  # not a store: the query that follows says so
    if not indexed:
        _build_index(path)
    return db


def history_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / FILE_NAME


def list_tags(path: Path | str) -> list[str]:
    with _connect_ro(Path(path)) as db:
        return [r[0] for r in db.execute("SELECT DISTINCT tag FROM points ORDER BY tag")]


def read_series(path: Path | str, tag: str, measurement: str | None = None) -> Series:
    """Every recorded sample of ``tag`` in time order. Raises KeyError if the tag is unknown."""
    sql = "SELECT time_s, value, quality FROM points WHERE tag = ?"
    args: tuple = (tag,)
    if measurement:
        sql += " AND measurement = ?"
        args += (measurement,)
    with _connect_ro(Path(path)) as db:
        rows = db.execute(sql + " ORDER BY time_s", args).fetchall()
    if not rows:
        raise KeyError(tag)
    t, v, q = zip(*rows)
    return Series(tag, np.array(t, dtype=float), np.array([math.nan if x is None else x for x in v], dtype=float),
                  tuple(q))


def read_points(path: Path | str, measurement: str | None = None, tag: str | None = None,
                run: str | None = None) -> list[Point]:
    """Every recorded point (of a measurement, of a tag, of a run) in time order, ``text`` and
    ``status`` included (an old store without the columns reads as empty text, status 0); a NULL
    value reads as NaN."""
    where, args = [], []
    for column, value in (("measurement", measurement), ("tag", tag), ("run", run)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    with _connect_ro(Path(path)) as db:
        have = {row[1] for row in db.execute("PRAGMA table_info(points)")}
        columns = ", ".join(c if c in have or c not in _ADDED else ("''" if c == "text" else "0")
                            for c in _COLUMNS.split(", "))
        sql = f"SELECT {columns} FROM points" + (" WHERE " + " AND ".join(where) if where else "")
        rows = db.execute(sql + " ORDER BY time_s, rowid", args).fetchall()
    return [Point(m, t, u, math.nan if v is None else v, ts, q, s, x, st) for m, t, u, q, s, ts, v, x, st in rows]


def read_runs(path: Path | str) -> list[str]:
    """The runs that recorded derived points into this store, in the order they first did."""
    with _connect_ro(Path(path)) as db:
        if "run" not in {row[1] for row in db.execute("PRAGMA table_info(points)")}:
            return []
        return [r[0] for r in db.execute(
            "SELECT run FROM points WHERE run != '' GROUP BY run ORDER BY MIN(rowid)")]
