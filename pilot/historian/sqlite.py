"""The embedded historian: one SQLite file per run (``DIR/history.sqlite``), no server needed.

Schema (same measurements and tags as the InfluxDB sinks, see ``base.py``)::

    CREATE TABLE points (
        measurement TEXT, tag TEXT, unit TEXT, quality TEXT, session TEXT,
        time_s REAL,   -- source time, seconds (plant clock in standalone runs)
        value REAL);
    CREATE INDEX points_tag_time ON points (tag, time_s);

Written in batches inside one transaction each (WAL journal), read back with ``read_series``.
Any SQLite tool opens it: ``sqlite3 DIR/history.sqlite "select * from points where tag=..."``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import Point, SinkError

FILE_NAME = "history.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    measurement TEXT NOT NULL, tag TEXT NOT NULL, unit TEXT NOT NULL,
    quality TEXT NOT NULL, session TEXT NOT NULL, time_s REAL NOT NULL, value REAL);
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
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def write_batch(self, points: Sequence[Point]) -> None:
        if self._db is None:
            raise SinkError(f"{self.path}: write before open()")
        rows = [(p.measurement, p.tag, p.unit, p.quality, p.session, p.time_s, p.value) for p in points]
        try:
            with self._db:
                self._db.executemany("INSERT INTO points VALUES (?,?,?,?,?,?,?)", rows)
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
