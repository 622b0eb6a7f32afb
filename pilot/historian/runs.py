"""Run ids: which process recorded a derived point.

A run id is the wall-clock start of the recording process (UTC, to the second) and 6 random hex
digits, e.g. ``20261201T190150Z-3f9a2c``: sortable by start, unique across restarts within the
same second (a restarted process after kill -9 gets a new one), short enough for a tag value.
The sinks put it on the derived measurements (``lineproto.DERIVED``) so that a restarted
process that recomputes an estimate at a timestamp the dead one already recorded stores a second
point beside it instead of replacing it.
"""

from __future__ import annotations

import secrets
import time


def new_run_id(now_s: float | None = None) -> str:
    t = time.gmtime(time.time() if now_s is None else now_s)
    return time.strftime("%Y%m%dT%H%M%SZ", t) + "-" + secrets.token_hex(3)
