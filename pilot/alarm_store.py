"""The alarm state store: the journal and the current state of every alarm in an embedded SQLite
file (created 0600), written at each transition (committed with ``synchronous=FULL``: fsynced)
and read back when ``pilot run`` starts, so an unacknowledged alarm stays unacknowledged and a
shelved one stays shelved until its expiry (plant time) across a restart.

Tables: ``alarm_state`` (alarm_id, state, condition, since, shelved_until: one row per alarm),
``out_of_service`` (unit), ``journal`` (every transition, in order).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from controllers.alarms import (
    AlarmState,
    JournalEntry,
    Priority,
    SavedAlarm,
    SavedAlarms,
)

from .secrets import private_file

log = logging.getLogger(__name__)
ALARM_STATE_FILE = "alarms.sqlite"
ALARM_STATE_ENV = "PILOT_ALARM_STATE"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarm_state (alarm_id TEXT PRIMARY KEY, state TEXT NOT NULL,
    condition INTEGER NOT NULL, since REAL, shelved_until REAL);
CREATE TABLE IF NOT EXISTS out_of_service (unit TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, tag TEXT NOT NULL,
    alarm_id TEXT NOT NULL, from_state TEXT NOT NULL, to_state TEXT NOT NULL, value REAL, priority INTEGER NOT NULL,
    operator TEXT, note TEXT NOT NULL);
"""


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


class AlarmStore:
    """One alarm state file. ``save`` at each transition, ``load`` at start; ``close`` at the end."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_file(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"alarm state file {self.path}: not an alarm state store ({exc})") from None

    def load(self) -> SavedAlarms | None:
        """The saved state (None when the store is new)."""
        rows = self._db.execute("SELECT alarm_id, state, condition, since, shelved_until FROM alarm_state "
                                "ORDER BY alarm_id").fetchall()
        if not rows:
            return None
        allowed = {s.value for s in AlarmState}
        bad = sorted({r[1] for r in rows} - allowed)
        if bad:
            raise ValueError(f"alarm state file {self.path}: field state has {bad}; allowed: {sorted(allowed)}")
        units = [r[0] for r in self._db.execute("SELECT unit FROM out_of_service ORDER BY unit")]
        return SavedAlarms(tuple(SavedAlarm(r[0], AlarmState(r[1]), bool(r[2]), _nan(r[3]), _nan(r[4]))
                                 for r in rows), tuple(units))

    def save(self, saved: SavedAlarms, entries: Iterable[JournalEntry] = ()) -> None:
        """Replace the current state and append ``entries`` to the journal, in one transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM alarm_state")
            db.executemany("INSERT INTO alarm_state VALUES (?, ?, ?, ?, ?)",
                           [(a.alarm_id, AlarmState(a.state).value, int(a.condition), _num(a.since),
                             _num(a.shelved_until)) for a in saved.alarms])
            db.execute("DELETE FROM out_of_service")
            db.executemany("INSERT INTO out_of_service VALUES (?)", [(u,) for u in saved.out_of_service])
            db.executemany("INSERT INTO journal (t, tag, alarm_id, from_state, to_state, value, priority, operator, "
                           "note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(e.t, e.tag, e.alarm_id, e.from_state.value, e.to_state.value, _num(e.value),
                             int(e.priority), e.operator, e.note) for e in entries])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def journal(self) -> list[JournalEntry]:
        """Every journalled transition, oldest first."""
        rows = self._db.execute("SELECT t, tag, alarm_id, from_state, to_state, value, priority, operator, note "
                                "FROM journal ORDER BY seq").fetchall()
        return [JournalEntry(r[0], r[1], r[2], AlarmState(r[3]), AlarmState(r[4]), _nan(r[5]), Priority(r[6]),
                             r[7], r[8]) for r in rows]

    def close(self) -> None:
        self._db.close()


def restore_into(alarms, store: AlarmStore) -> bool:
    """Restore an ``AlarmManager`` from ``store``; True when there was a saved state."""
    saved = store.load()
    if saved is None:
        return False
    alarms.restore(saved)
    standing = sum(a.state != AlarmState.NORMAL for a in saved.alarms)
    log.info("alarm state restored from %s: %d alarm(s) not normal", store.path, standing)
    return True
