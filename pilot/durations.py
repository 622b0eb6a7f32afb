"""Human durations for the CLI: ``24h``, ``90min``, ``30s``, ``2d``, ``1h30min``, or plain seconds."""

from __future__ import annotations

import re

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m|h|d)")
MAX_DURATION_S = 366 * 86400.0


def parse_duration(text: str) -> float:
    """Seconds in ``text``; ValueError with what is allowed if it is not a positive duration."""
    s = text.strip().lower()
    allowed = "a positive duration such as 30s, 90min, 24h, 2d or 1h30min (at most 366 d)"
    try:
        value = float(s)
    except ValueError:
        pos, value = 0, 0.0
        for m in _PART.finditer(s):
            if m.start() != pos and s[pos : m.start()].strip():
                raise ValueError(f"cannot read duration {text!r}: use {allowed}") from None
            value += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos == 0 or s[pos:].strip():
            raise ValueError(f"cannot read duration {text!r}: use {allowed}") from None
    if not (0 < value <= MAX_DURATION_S):
        raise ValueError(f"duration {text!r} is impossible: use {allowed}")
    return value


def duration_or_fail(text: str | None, fail) -> float | None:
    """For the CLI: None stays None; a duration that cannot be read ends through ``fail(message)``
    (which exits)."""
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(str(exc))
        raise  # fail() exits; this line is for type checkers
