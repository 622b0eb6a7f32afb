"""A rendering of two generated Grafana dashboards with the values of a real run, for the docs
(Grafana itself does not run here): the overview's unit tiles coloured by the panels' own
threshold overrides, and the alarm dashboard's standing-alarm table from the recorded
``<ALARM>.STATE`` points. It is a picture of the dashboards' logic (thresholds, colours, state
names), not a screenshot of Grafana.

``render_screens(config, out_dir, hours, malfunction)`` runs the closed loop on the twin
(``pilot.historian.feed.simulated_run``, the same loop as ``pilot simulate --control auto``) and
writes ``overview_rendering.png`` and ``alarms_rendering.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from twin.signals import Point

from .build import build_dashboards
from .limits import (
    DARK_GREY,
    PRIORITY_NAMES,
    STATE_COLORS,
    STATE_NAMES,
    threshold_color,
)

_UNIT_LABELS = {"pressurekpa": "kPa", "celsius": "°C", "percent": "%", "litre": "L", "amp": "A", "volt": "V",
                "kwatt": "kW", "none": ""}
LABEL = "rendering of the generated dashboard's thresholds with the values of a closed-loop twin run (not Grafana)"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def last_values(points: Iterable[Point]) -> tuple[dict[str, float], dict[str, tuple[int, dict, float]]]:
    """(last finite process value per tag, last alarm state per alarm id: (code, text JSON, time))."""
    values: dict[str, float] = {}
    states: dict[str, tuple[int, dict, float]] = {}
    for p in points:
        if p.measurement == "process" and math.isfinite(p.value):
            values[p.tag] = p.value
        elif p.measurement == "alarm" and p.tag.endswith(".STATE"):
            states[p.tag[:-len(".STATE")]] = (int(p.value), json.loads(p.text) if p.text else {}, p.time_s)
    return values, states


def unit_label(grafana_unit: str) -> str:
    """What Grafana shows for a unit id (``suffix: mg/L`` -> ``mg/L``, ``celsius`` -> ``°C``)."""
    if grafana_unit.startswith("suffix:"):
        return grafana_unit[len("suffix:"):].strip()
    return _UNIT_LABELS.get(grafana_unit, grafana_unit)


def _tiles(overview: Mapping) -> list[tuple[str, list[tuple[str, dict, str]]]]:
    """(panel title, [(tag, thresholds, unit)]) of the overview's unit tiles."""
    out = []
    for p in overview["panels"]:
        rows = []
        for o in p.get("fieldConfig", {}).get("overrides", []):
            props = {q["id"]: q["value"] for q in o["properties"]}
            if o["matcher"]["id"] == "byName" and "thresholds" in props and "." in o["matcher"]["options"]:
                rows.append((o["matcher"]["options"], props["thresholds"], props.get("unit", "")))
        if rows:
            out.append((p["title"], rows))
    return out


def render_overview(overview: Mapping, values: Mapping[str, float], path: Path, title: str) -> Path:
    plt = _pyplot()
    tiles = _tiles(overview)
    cols = 4
    n_rows = sum(math.ceil(len(rows) / cols) + 1 for _, rows in tiles)
    fig, ax = plt.subplots(figsize=(13, 0.42 * n_rows + 1.2))
    ax.set_axis_off()
    ax.set_xlim(0, cols)
    ax.set_ylim(n_rows, -0.6)
    y = 0.0
    for unit, rows in tiles:
        ax.text(0, y + 0.6, unit, fontsize=11, fontweight="bold", color="#222222")
        y += 1
        for k, (tag, th, unit_code) in enumerate(rows):
            r, c = divmod(k, cols)
            v = values.get(tag, math.nan)
            color = threshold_color(th, v) if math.isfinite(v) else "#b0b0b0"
            ax.add_patch(plt.Rectangle((c + 0.02, y + r + 0.05), 0.96, 0.9, color=color))
            shown = "no data" if not math.isfinite(v) else f"{v:.4g} {unit_label(unit_code)}".strip()
            ax.text(c + 0.06, y + r + 0.55, f"{tag}   {shown}", fontsize=8, color="white", va="center")
        y += math.ceil(len(rows) / cols)
    ax.set_title(f"{title}\n{LABEL}", fontsize=10, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_alarms(states: Mapping[str, tuple[int, dict, float]], path: Path, title: str) -> Path:
    plt = _pyplot()
    standing = sorted(((a, s) for a, s in states.items() if 1 <= s[0] <= 5),
                      key=lambda kv: (kv[1][1].get("priority", 9), kv[0]))
    rows = max(len(standing), 1)
    fig, ax = plt.subplots(figsize=(12, 0.32 * rows + 0.9))
    ax.set_axis_off()
    cells = [[a, STATE_NAMES.get(code, str(code)), f"{text.get('priority', '?')} "
              f"{PRIORITY_NAMES.get(text.get('priority'), '')}", text.get("by") or "",
              "" if text.get("until") is None else f"{text['until']:.0f}"] for a, (code, text, _) in standing]
    colors = [[STATE_COLORS.get(code, DARK_GREY)] + ["#f4f4f4"] * 4 for _, (code, _, _) in standing]
    if not cells:
        cells, colors = [["no standing alarm", "", "", "", ""]], [["#f4f4f4"] * 5]
    table = ax.table(cellText=cells, cellColours=colors, loc="upper left", cellLoc="left",
                     colLabels=["alarm", "state", "priority", "by", "shelved until (plant s)"],
                     colWidths=[0.3, 0.25, 0.15, 0.12, 0.18])
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.4)
    for (r, c), cell in table.get_celld().items():
        if r > 0 and c == 0:
            cell.get_text().set_color("white")
    ax.set_title(f"{title}\n{LABEL}", fontsize=10, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_screens(config, out_dir: Path, hours: float = 2.0, malfunction=None) -> list[Path]:
    from pilot.historian.feed import simulated_run

    points = [p for batch in simulated_run(config, hours * 3600.0, epoch_s=0.0, seed=0, malfunction=malfunction)
              for p in batch]
    values, states = last_values(points)
    boards = build_dashboards(config)
    what = f"after {hours:g} plant-hours" + (f" with {malfunction.kind} on {malfunction.target}" if malfunction else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    return [render_overview(boards["overview"], values, out_dir / "overview_rendering.png", f"line overview {what}"),
            render_alarms(states, out_dir / "alarms_rendering.png", f"standing alarms {what}")]
