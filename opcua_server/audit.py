"""The audit journal of operator actions: who did what to the running control loop, and the answer.

One JSON object per line, appended and fsynced per action, in a file created owner-only (0600)
from the start::

    {"wall": "2026-01-05T08:14:03.512Z", "t": 1767600843.0, "user": "alice", "role": "operator",
     "action": "shelve", "target": "CELL1.TEMP.HI", "arguments": {"duration_s": 600.0},
     "result": "ok: 1 transition(s)", "session": "live"}

``result`` starts with ``ok`` for an action applied and ``refused:`` for one that was not (wrong
role, unknown alarm, bad arguments, control loop not running). Each entry also goes to the
historian as an ``audit`` point ``OPERATOR.<ACTION>`` (value 1.0 applied, 0.0 refused; ``text``:
JSON of user, role, target and result), through the ``sink`` the journal is given.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from twin.signals import Point

log = logging.getLogger(__name__)
AUDIT_FILE = "audit.jsonl"


def wall_time() -> str:
    """Now, ISO 8601 UTC with milliseconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AuditEntry:
    """One operator action and its answer."""

    t: float  # plant time the action applied at
    user: str  # the authenticated user ("anonymous" for an anonymous session)
    role: str
    action: str  # acknowledge, acknowledge_all, shelve, unshelve, set_mode, set_shelve_limit
    target: str  # alarm id, loop name, or "" (acknowledge_all, set_shelve_limit)
    arguments: dict = field(default_factory=dict)
    result: str = ""
    session: str = ""
    wall: str = field(default_factory=wall_time)

    @property
    def ok(self) -> bool:
        return self.result.startswith("ok")

    def line(self) -> str:
        body = {"wall": self.wall, **{k: _finite(v) for k, v in asdict(self).items() if k != "wall"}}
        body["arguments"] = {k: _finite(v) for k, v in self.arguments.items()}
        return json.dumps(body, default=str, allow_nan=False)

    def point(self) -> Point:
        text = json.dumps({"user": self.user, "role": self.role, "target": self.target, "result": self.result})
        return Point("audit", f"OPERATOR.{self.action.upper()}", "", 1.0 if self.ok else 0.0, self.t,
                     "good" if self.ok else "bad", self.session, text)


class AuditError(Exception):
    """The journal cannot be written: the message names the file and why."""


def _finite(v):
    """JSON has no NaN or infinity: such a number is written as its text."""
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


class AuditJournal:
    """Append-only JSON-lines journal at ``path`` (created 0600; its folder must exist).
    ``sink`` receives each entry's historian point (a recorder's ``record_many``)."""

    def __init__(self, path: Path, sink: Callable[[Iterable[Point]], None] | None = None):
        self.path = Path(path)
        self.sink = sink
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open the audit journal {self.path}: {exc.strerror} "
                             "(--audit / PILOT_AUDIT_JOURNAL names the file; its folder must exist)") from None
        os.fchmod(self._fd, 0o600)
        self.entries = 0

    def record(self, entry: AuditEntry) -> AuditEntry:
        """Write one line (fsynced before this returns) and hand the point to the sink."""
        os.write(self._fd, (entry.line() + "\n").encode())
        os.fsync(self._fd)
        self.entries += 1
        (log.info if entry.ok else log.warning)("operator action %s %s by %s (%s): %s", entry.action,
                                                entry.target, entry.user, entry.role, entry.result)
        if self.sink is not None:
            self.sink([entry.point()])
        return entry

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> AuditJournal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_journal(path: Path) -> list[dict]:
    """Every entry of a journal file, oldest first."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
