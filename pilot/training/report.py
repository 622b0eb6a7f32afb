"""Score a training session and file its record: ``report.html`` (A4 print stylesheet), ``report.pdf``
and ``trends.png``, written side by side.

The score is a pure function of the session record (``SessionRecord``: who was trained, by whom,
when, on which config; the alarm rows, the journalled actions, the recorded tags, the Tb product
made and the part of it made off spec), so it can be recomputed from a stored record and
unit-tested with a constructed one. The formula is in ``pilot.training.scenario``. Every time in
the report is session time in min:s.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from controllers.alarms_support import AlarmState

from .report_pages import draw_trends, mmss, write_pdf
from .scenario import Recorder, Response, Scenario
from .session import Action, TrainingSession

NOT_TRAINEE = frozenset({"instructor", "scenario"})  # journal ``by`` values that are not the trainee


@dataclass(frozen=True)
class AlarmRow:
    """One alarm occurrence: raised, then acknowledged or shelved (or neither) by the end."""

    alarm_id: str
    raised_t: float
    acked_t: float | None
    operator: str | None
    shelved_t: float | None = None

    @property
    def unacknowledged(self) -> bool:
        return self.acked_t is None and self.shelved_t is None

    def standing_s(self, t_end: float) -> float:
        """Seconds it stood unacknowledged: raise to acknowledge, shelve, or the end of the session."""
        end = self.acked_t if self.acked_t is not None else self.shelved_t
        return max(0.0, (t_end if end is None else end) - self.raised_t)


@dataclass(frozen=True)
class SessionRecord:
    """What a session recorded: everything the score and the report read."""

    scenario: str
    session_id: str
    t_end: float
    tick_s: float
    alarms: tuple[AlarmRow, ...]
    actions: tuple[Action, ...]
    t: tuple[float, ...]
    values: dict[str, tuple[float, ...]]
    off_spec_kg: float
    product_kg: float
    trainee: str = ""
    instructor: str = ""
    started_utc: datetime | None = None
    config_sha256: str = ""
    config_file: str | None = None
    config_file_sha256: str | None = None


@dataclass
class ResponseResult:
    id: str
    text: str
    points: float
    met: bool
    reference_t: float | None
    action_t: float | None
    note: str = ""

    @property
    def time_to_act_s(self) -> float | None:
        if self.reference_t is None or self.action_t is None:
            return None
        return self.action_t - self.reference_t


@dataclass
class Score:
    scenario: str
    session_id: str
    score: float
    responses: list[ResponseResult]
    alarms: list[AlarmRow]
    out_of_spec_s: dict[str, float]
    off_spec_kg: float
    product_kg: float
    penalties: dict[str, float] = field(default_factory=dict)
    record: SessionRecord | None = None

    @property
    def met(self) -> list[str]:
        return [r.id for r in self.responses if r.met]

    @property
    def off_spec_fraction(self) -> float:
        return self.off_spec_kg / self.product_kg if self.product_kg > 0 else 0.0


# -- the record --------------------------------------------------------------------------------
def alarm_rows(journal) -> list[AlarmRow]:
    """Alarm occurrences from an alarm journal: a raise opens one (a re-raise while it is still
    unacknowledged does not), an acknowledge or a shelve closes it."""
    rows: list[AlarmRow] = []
    open_: dict[str, int] = {}
    for e in journal:
        if e.to_state == AlarmState.UNACK_ACTIVE and e.alarm_id not in open_:
            open_[e.alarm_id] = len(rows)
            rows.append(AlarmRow(e.alarm_id, e.t, None, None))
        elif e.alarm_id in open_ and (e.note == "acknowledged" or e.to_state == AlarmState.SHELVED):
            i = open_.pop(e.alarm_id)
            r = rows[i]
            rows[i] = (AlarmRow(r.alarm_id, r.raised_t, e.t, e.operator) if e.note == "acknowledged"
                       else AlarmRow(r.alarm_id, r.raised_t, None, e.operator, e.t))
    return rows


def config_sha256(config) -> str:
    """SHA-256 of the resolved config (canonical JSON: sorted keys, no spaces)."""
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def record_of(session: TrainingSession, rec: Recorder, scenario: str) -> SessionRecord:
    """The record of a session run with a recorder (``run_scenario``)."""
    path = Path(session.config_path) if session.config_path else None
    file_hash = hashlib.sha256(path.read_bytes()).hexdigest() if path is not None and path.is_file() else None
    return SessionRecord(
        scenario=scenario, session_id=session.session_id, t_end=session.t, tick_s=session.tc.tick_s,
        alarms=tuple(alarm_rows(session.alarms.journal)), actions=tuple(session.journal), t=tuple(rec.t),
        values={k: tuple(v) for k, v in rec.values.items()}, off_spec_kg=rec.off_spec_kg,
        product_kg=rec.product_kg, trainee=session.trainee, instructor=session.instructor,
        started_utc=session.started_utc, config_sha256=config_sha256(session.config),
        config_file=None if path is None else str(path), config_file_sha256=file_hash)


# -- the score ---------------------------------------------------------------------------------
def _reference(r: Response, scenario: Scenario, rows) -> tuple[float | None, str]:
    if r.after_alarm:
        first = next((a.raised_t for a in rows if a.alarm_id == r.after_alarm), None)
        return first, "" if first is not None else f"{r.after_alarm} never raised"
    if r.after_s is not None:
        return r.after_s, ""
    onsets = [m.onset_s for m in scenario.malfunctions]
    return (min(onsets) if onsets else 0.0), ""


def _action_t(r: Response, ref: float, record: SessionRecord) -> float | None:
    if r.kind == "acknowledge":
        return next((a.acked_t for a in record.alarms if a.alarm_id == r.alarm and a.acked_t is not None
                     and a.acked_t >= ref), None)
    for a in record.actions:
        v = a.args.get("values", {}).get(r.tag) if a.kind == "write" and a.by not in NOT_TRAINEE else None
        if v is not None and a.t >= ref and ((r.above is not None and v > r.above)
                                              or (r.below is not None and v < r.below)):
            return a.t
    return None


def _response(r: Response, scenario: Scenario, record: SessionRecord) -> ResponseResult:
    ref, note = _reference(r, scenario, record.alarms)
    act = None if ref is None else _action_t(r, ref, record)
    met = act is not None and act - ref <= r.within_s
    if act is None and not note:
        note = "not done"
    elif act is not None and not met:
        note = f"too late ({mmss(act - ref)} > {mmss(r.within_s)})"
    return ResponseResult(r.id, r.text or r.id, r.points, met, ref, act, note)


def _out_of_spec(scenario: Scenario, record: SessionRecord) -> dict[str, float]:
    out = {}
    for s in scenario.spec:
        v = np.array(record.values[s.tag], dtype=float)
        bad = np.zeros(len(v), dtype=bool)
        if s.low is not None:
            bad |= v < s.low
        if s.high is not None:
            bad |= v > s.high
        out[s.tag] = float(bad[1:].sum() * record.tick_s)  # the first sample is the start state
    return out


def score_record(scenario: Scenario, record: SessionRecord) -> Score:
    """The score of a session record (formula: ``pilot.training.scenario``)."""
    results = [_response(r, scenario, record) for r in scenario.responses]
    earned = sum(r.points for r in results if r.met) / sum(r.points for r in scenario.responses)
    out = _out_of_spec(scenario, record)
    penalties = {f"out of spec: {s.tag}": min(s.max_penalty, s.penalty_per_min * out[s.tag] / 60.0)
                 for s in scenario.spec}
    frac = record.off_spec_kg / record.product_kg if record.product_kg > 0 else 0.0
    penalties["off-spec Tb product"] = scenario.off_spec.points * min(1.0, frac)
    u = scenario.unacknowledged
    n_end = sum(a.unacknowledged for a in record.alarms)
    standing_min = sum(a.standing_s(record.t_end) for a in record.alarms) / 60.0
    penalties["unacknowledged alarms"] = min(u.max_penalty, u.points_per_alarm * n_end + u.points_per_min * standing_min)
    score = max(0.0, 100.0 * earned - sum(penalties.values()))
    return Score(scenario.name, record.session_id, round(score, 1), results, list(record.alarms), out,
                 record.off_spec_kg, record.product_kg, penalties, record)


def score_run(scenario: Scenario, session: TrainingSession, rec: Recorder) -> Score:
    return score_record(scenario, record_of(session, rec, scenario.name))


# -- the HTML record ---------------------------------------------------------------------------
_CSS = """body{font-family:sans-serif;max-width:900px;margin:2em auto;color:#111}
table{border-collapse:collapse;margin:.6em 0 1.2em}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#eee}.score{font-size:2em;margin:.3em 0}.met{color:#0a6b0a;font-weight:bold}
.missed{color:#b00000;font-weight:bold}td.num{text-align:right;font-variant-numeric:tabular-nums}
@page{size:A4;margin:15mm}
@media print{body{max-width:none;margin:0;font-size:10pt}section+section{break-before:page;page-break-before:always}
table,img,tr{break-inside:avoid;page-break-inside:avoid}th{background:#ddd}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}}"""


def _when(t: float | None) -> str:
    return "—" if t is None else mmss(t)


def _iso(d: datetime | None) -> tuple[str, str]:
    if d is None:
        return "—", "—"
    return d.isoformat(timespec="seconds"), d.astimezone().isoformat(timespec="seconds")


def record_lines(scenario: Scenario, score: Score) -> list[tuple[str, str]]:
    """The identity of the record (label, value): HTML, PDF and CLI show the same lines."""
    r = score.record
    utc, local = _iso(r.started_utc)
    cfg = f"{r.config_sha256[:12]} (resolved config, SHA-256)"
    if r.config_file:
        cfg += f"; file {r.config_file_sha256[:12] if r.config_file_sha256 else '—'} ({r.config_file})"
    return [("trainee", r.trainee or "—"), ("instructor", r.instructor or "—"), ("started, UTC", utc),
            ("started, local", local), ("scenario", f"{scenario.name}: {scenario.title}"),
            ("initial condition", scenario.initial), ("session", f"{r.session_id}, plant time {mmss(r.t_end)} min:s"),
            ("config version", cfg)]


def _tr(cells, num=()) -> str:
    return "<tr>" + "".join(f"<td class=num>{c}</td>" if i in num else f"<td>{c}</td>"
                            for i, c in enumerate(cells)) + "</tr>"


def _table(header: list[str], rows: list[str]) -> str:
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" + "".join(rows) + "</table>"


def _html(scenario: Scenario, score: Score, png: bytes) -> str:
    e, r = html.escape, score.record
    ident = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in record_lines(scenario, score))
    resp = [_tr([e(x.text), f"<span class={'met' if x.met else 'missed'}>{'✔ met' if x.met else '✘ missed'}</span>",
                 _when(x.time_to_act_s), f"{x.points:g}", e(x.note) or "—"], num=(2, 3)) for x in score.responses]
    alarms = [_tr([e(a.alarm_id), mmss(a.raised_t), _when(a.acked_t), _when(None if a.acked_t is None else a.acked_t - a.raised_t),
                   e(a.operator or "—"), mmss(a.standing_s(r.t_end))
                   + (" <span class=missed>✘ still unacknowledged</span>" if a.unacknowledged else "")],
                  num=(1, 2, 3)) for a in score.alarms]
    limits = {s.tag: s for s in scenario.spec}
    spec = [_tr([e(k), e(_limits(limits[k])), mmss(v)], num=(2,)) for k, v in score.out_of_spec_s.items()]
    pen = [_tr([e(k), f"−{v:.1f}"], num=(1,)) for k, v in score.penalties.items()]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(scenario.title)}: training record</title>
<style>{_CSS}</style></head><body>
<section><h1>Training record: {e(scenario.title)}</h1><table>{ident}</table>
<p class="score">Score: <b>{score.score:.0f}</b> / 100</p><p>{e(scenario.teaches)}</p>
<h2>Expected responses</h2>{_table(["response", "result", "time to act, min:s", "points", "why missed"], resp)}</section>
<section><h2>Alarms</h2>{_table(["alarm", "raised, min:s", "acknowledged, min:s", "time to acknowledge, min:s", "by",
                                 "stood unacknowledged, min:s"], alarms) if alarms else "<p>No alarm was raised.</p>"}
<h2>Spec and product</h2>{_table(["tag", "spec", "time out of spec, min:s"], spec) if spec else ""}
<p>Tb product made in the session: {score.product_kg * 1000:.2f} g, of which off spec (purity below
{scenario.off_spec.tb_purity_min_percent:g} %): <b>{score.off_spec_kg * 1000:.2f} g ({100 * score.off_spec_fraction:.0f} %)</b>.</p>
<h2>Penalties</h2>{_table(["penalty", "points"], pen)}</section>
<section><h2>Trends</h2><img alt="trends" src="data:image/png;base64,{base64.b64encode(png).decode()}" style="width:100%">
<p>Time axis: session time, min:s. Orange: alarm raised; green: acknowledged; ▼: the trainee's writes; dashed red: the spec.</p>
</section></body></html>"""


def _limits(s) -> str:
    return " and ".join(x for x in (f"≥ {s.low:g}" if s.low is not None else "",
                                    f"≤ {s.high:g}" if s.high is not None else "") if x) or "—"


def write_report(scenario: Scenario, session: TrainingSession, rec: Recorder, score: Score,
                 out_dir: Path | str) -> Path:
    """Write report.html, report.pdf and trends.png into ``out_dir``; returns the HTML path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    units = {t.name: t.unit for t in session.config.tags}
    fig = plt.figure(figsize=(9, 1.9 * max(1, len(rec.tags)) + 0.6))
    draw_trends(fig, scenario, score, units)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    png = buf.getvalue()
    (out_dir / "trends.png").write_bytes(png)
    write_pdf(out_dir / "report.pdf", scenario, score, units, record_lines(scenario, score))
    path = out_dir / "report.html"
    path.write_text(_html(scenario, score, png))
    return path
