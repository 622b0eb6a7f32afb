"""Colours from the plant config: alarm limits and priorities, state names, the alarm-state codes.

ISA-101: a value is grey while no alarm limit of its tag is crossed and takes the colour of
the crossed limit's priority beyond it. Grafana's absolute thresholds give a value the colour of
the highest step whose ``value`` is <= it (the first step, ``value: None``, is minus infinity);
``threshold_color`` is that rule, for the tests and the renderings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

DARK_GREY = "#5a5a5a"
PRIORITY_NAMES = {1: "critical", 2: "high", 3: "medium", 4: "low"}
PRIORITY_COLORS = {1: "#d8262e", 2: "#ff7a00", 3: "#e0a800", 4: "#9a6fd6"}
STATE_NAMES = {0: "normal", 1: "active unacknowledged", 2: "active acknowledged",
               3: "returned unacknowledged", 4: "shelved", 5: "out of service"}
STATE_COLORS = {0: DARK_GREY, 1: "#d8262e", 2: "#e0a800", 3: "#3274d9", 4: "#9a6fd6", 5: "#8c8c8c"}
_CODE = re.compile(r"(?:^|[:,]\s*)(\d+)\s+([A-Za-z][\w -]*?)\s*(?=,|$)")


def alarm_thresholds(limit) -> dict:
    """Absolute thresholds for a ``LimitAlarmConfig``: grey between the innermost limits, the
    priority colour of L / LL below them, of H / HH above them."""
    low = [(v, p) for v, p in ((limit.ll_eng, limit.ll_priority), (limit.l_eng, limit.l_priority))
           if v is not None]
    high = [(v, p) for v, p in ((limit.h_eng, limit.h_priority), (limit.hh_eng, limit.hh_priority))
            if v is not None]
    base = PRIORITY_COLORS[low[0][1]] if low else DARK_GREY
    steps = [{"color": base, "value": None}]
    steps += [{"color": PRIORITY_COLORS[above[1]], "value": v} for (v, _), above in zip(low, low[1:])]
    if low:
        steps.append({"color": DARK_GREY, "value": low[-1][0]})
    steps += [{"color": PRIORITY_COLORS[p], "value": v} for v, p in high]
    return {"mode": "absolute", "steps": steps}


def grey_thresholds() -> dict:
    return {"mode": "absolute", "steps": [{"color": DARK_GREY, "value": None}]}


def threshold_color(thresholds: Mapping, value: float) -> str:
    """The colour Grafana gives ``value`` under absolute ``thresholds``."""
    color = thresholds["steps"][0]["color"]
    for step in thresholds["steps"][1:]:
        if value >= step["value"]:
            color = step["color"]
    return color


def code_names(description: str) -> dict[int, str]:
    """State names from a tag description such as ``"role: 0 standby, 1 lead, 2 lag"``."""
    return {int(code): name.strip() for code, name in _CODE.findall(description)}


def value_mappings(names: Mapping[int, str], colors: Mapping[int, str] | None = None) -> list[dict]:
    """One Grafana ``value`` mapping: code -> text (and colour), e.g. column roles, alarm states."""
    options = {str(code): {"text": text, "index": i, **({"color": colors[code]} if colors and code in colors
                                                       else {})}
               for i, (code, text) in enumerate(sorted(names.items()))}
    return [{"type": "value", "options": options}]


def state_palette(names: Mapping[int, str]) -> dict[int, str]:
    """Muted, distinct colours for the states of a process state tag (none of them alarm red)."""
    muted = ("#5a5a5a", "#3274d9", "#56a64b", "#8ab8ff", "#b877d9", "#a0a0a0", "#6e9fa3")
    return {code: muted[i % len(muted)] for i, code in enumerate(sorted(names))}
