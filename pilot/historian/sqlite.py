"""The embedded historian: one SQLite file per run (``DIR/history.sqlite``), no server needed.

Schema (same measurements and tags as the InfluxDB sinks, see ``base.py``)::

    CREATE TABLE points (
        measurement TEXT, tag TEXT, unit TEXT, quality TEXT, session TEXT,
        time_s REAL,   -- source time, seconds (plant clock in standalone runs)
        value REAL,
        text TEXT NOT NULL DEFAULT '');   -- free text (operator actions), '' for most points
    CREATE INDEX points_tag_time ON points (tag, time_s);

A store written before ``text`` existed still opens: the column is added on ``open()``.
Written in batches inside one transaction each (WAL journal), read back with ``read_series`` and
``read_points``. Any SQLite tool opens it: ``sqlite3 DIR/history.sqlite "select * from points
where tag=..."``. The file is created owner-only (0600; SQLite gives its ``-wal`` and ``-shm``
the same mode): it is process data.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..secrets import private_file
from .base import Point, SinkError

FILE_NAME = "history.sqlite"

_COLUMNS = "measurement, tag, unit, quality, session, time_s, value, text"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    measurement TEXT NOT NULL, tag TEXT NOT NULL, unit TEXT NOT NULL,
    quality TEXT NOT NULL, session TEXT NOT NULL, time_s REAL NOT NULL, value REAL,
    text TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS points_tag_time ON points (tag, time_s);
"""


@dataclass(frozen=True)
class Series:
    tag: str
    time_s: np.ndarray
    value: np.ndarray
    quality: tuple[str, ...]


class SqliteSink:
    """Sink into an SQLite file (created with its parent folder if missing)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(private_file(self.path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(points)")}
        if "text" not in columns:  # a store from before the text field
            self._db.execute("ALTER TABLE points ADD COLUMN text TEXT NOT NULL DEFAULT ''")

    def write_batch(self, points: Sequence[Point]) -> None:
        if self._db is None:
            raise SinkError(f"{self.path}: write before open()")
        rows = [(p.measurement, p.tag, p.unit, p.quality, p.session, p.time_s, p.value, p.text)
                for p in points]
        try:
            with self._db:
                self._db.executemany(f"INSERT INTO points ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", rows)
        except sqlite3.Error as exc:
            raise SinkError(f"{self.path}: {exc}") from exc

    def flush(self) -> None:
        if self._db is not None:
            self._db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _connect_ro(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FileNotFoundError(f"no historian file at {path}")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


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
    return Series(tag, np.array(t, dtype=float), np.array(v, dtype=float), tuple(q))


def read_points(path: Path | str, measurement: str | None = None, tag: str | None = None) -> list[Point]:
    """Every recorded point (of a measurement, of a tag) in time order, ``text`` included (an
    old store without the column reads as empty text)."""
    where, args = [], []
    for column, value in (("measurement", measurement), ("tag", tag)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    with _connect_ro(Path(path)) as db:
        has_text = "text" in {row[1] for row in db.execute("PRAGMA table_info(points)")}
        columns = _COLUMNS if has_text else _COLUMNS.replace(", text", ", ''")
        sql = f"SELECT {columns} FROM points" + (" WHERE " + " AND ".join(where) if where else "")
        rows = db.execute(sql + " ORDER BY time_s, rowid", args).fetchall()
    return [Point(m, t, u, v, ts, q, s, x) for m, t, u, q, s, ts, v, x in rows]
