"""Score a finished training run and write the trainee report (one HTML file, PNG plots embedded).

Measured from the session's own records: the alarm journal (raise and acknowledge times, who
acknowledged), the action journal (setpoint writes), the recorded tags (time out of spec) and the
Tb product made while its purity was below spec (off-spec kg). Formula: ``pilot.training.scenario``.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controllers.alarms_support import AlarmState

from .scenario import Recorder, Response, Scenario
from .session import TrainingSession


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
class AlarmRow:
    alarm_id: str
    raised_t: float
    acked_t: float | None
    operator: str | None


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

    @property
    def met(self) -> list[str]:
        return [r.id for r in self.responses if r.met]


def _alarm_rows(session: TrainingSession) -> list[AlarmRow]:
    rows: list[AlarmRow] = []
    open_: dict[str, AlarmRow] = {}
    for e in session.alarms.journal:
        if e.to_state == AlarmState.UNACK_ACTIVE:
            open_[e.alarm_id] = AlarmRow(e.alarm_id, e.t, None, None)
            rows.append(open_[e.alarm_id])
        elif e.note == "acknowledged" and e.alarm_id in open_:
            row = open_.pop(e.alarm_id)
            row.acked_t, row.operator = e.t, e.operator
    return rows


def _reference(r: Response, scenario: Scenario, rows: list[AlarmRow]) -> tuple[float | None, str]:
    if r.after_alarm:
        first = next((a.raised_t for a in rows if a.alarm_id == r.after_alarm), None)
        return first, "" if first is not None else f"{r.after_alarm} never raised"
    if r.after_s is not None:
        return r.after_s, ""
    onsets = [m.onset_s for m in scenario.malfunctions]
    return (min(onsets) if onsets else 0.0), ""


def _response(r: Response, scenario: Scenario, session: TrainingSession, rows: list[AlarmRow]) -> ResponseResult:
    ref, note = _reference(r, scenario, rows)
    act = None
    if ref is not None and r.kind == "acknowledge":
        act = next((a.acked_t for a in rows if a.alarm_id == r.alarm and a.acked_t is not None
                    and a.acked_t >= ref), None)
    elif ref is not None:
        for a in session.journal:
            v = a.args.get("values", {}).get(r.tag) if a.kind == "write" and a.by == "trainee" else None
            if v is not None and a.t >= ref and ((r.above is not None and v > r.above)
                                                  or (r.below is not None and v < r.below)):
                act = a.t
                break
    met = act is not None and act - ref <= r.within_s
    if act is None and not note:
        note = "not done"
    elif act is not None and not met:
        note = f"too late ({act - ref:.0f} s > {r.within_s:.0f} s)"
    return ResponseResult(r.id, r.text or r.id, r.points, met, ref, act, note)


def score_run(scenario: Scenario, session: TrainingSession, rec: Recorder) -> Score:
    rows = _alarm_rows(session)
    results = [_response(r, scenario, session, rows) for r in scenario.responses]
    total = sum(r.points for r in scenario.responses)
    earned = sum(r.points for r in results if r.met)
    tick = session.tc.tick_s
    out, penalties = {}, {}
    for s in scenario.spec:
        v = np.array(rec.values[s.tag])
        bad = np.zeros(len(v), dtype=bool)
        if s.low is not None:
            bad |= v < s.low
        if s.high is not None:
            bad |= v > s.high
        out[s.tag] = float(bad[1:].sum() * tick)
        penalties[f"out of spec: {s.tag}"] = min(s.max_penalty, s.penalty_per_min * out[s.tag] / 60.0)
    penalties["off-spec Tb product"] = min(scenario.off_spec.max_penalty,
                                          scenario.off_spec.penalty_per_kg * rec.off_spec_kg)
    score = max(0.0, 100.0 * earned / total - sum(penalties.values()))
    return Score(scenario.name, session.session_id, round(score, 1), results, rows, out, rec.off_spec_kg,
                 rec.product_kg, penalties)


# -- the report ------------------------------------------------------------------------------
def _png(scenario: Scenario, session: TrainingSession, rec: Recorder, score: Score) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = rec.tags or []
    n = max(1, len(tags))
    n_lines = _card(scenario, score).count("\n") + 1
    card_h = 0.16 * n_lines + 0.2
    fig = plt.figure(figsize=(9, 2.0 * n + card_h + 0.6))
    gs = fig.add_gridspec(n + 1, 1, height_ratios=[card_h] + [2.0] * n)
    card = fig.add_subplot(gs[0])
    card.axis("off")
    card.text(0.0, 1.0, _card(scenario, score), va="top", ha="left", family="monospace", fontsize=8.5,
              transform=card.transAxes)
    axes = np.array([[fig.add_subplot(gs[k + 1])] for k in range(n)])
    for ax in axes[1:, 0]:
        ax.sharex(axes[0, 0])
    t_min = np.array(rec.t) / 60.0
    limits = {s.tag: s for s in scenario.spec}
    for ax, tag in zip(axes[:, 0], tags):
        ax.plot(t_min, rec.values[tag], lw=1.2, color="tab:blue")
        s = limits.get(tag)
        for lim in ((s.low, s.high) if s else ()):
            if lim is not None:
                ax.axhline(lim, color="tab:red", ls="--", lw=0.8)
        for a in score.alarms:
            ax.axvline(a.raised_t / 60.0, color="tab:orange", lw=0.7, alpha=0.6)
            if a.acked_t is not None:
                ax.axvline(a.acked_t / 60.0, color="tab:green", lw=0.7, alpha=0.6)
        for a in session.journal:
            if a.kind == "write" and tag in a.args.get("values", {}):
                ax.plot(a.t / 60.0, a.args["values"][tag], "v", color="black")
        ax.set_ylabel(tag, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("session time, min (orange: alarm raised, green: acknowledged, ▼: trainee write)")
    fig.suptitle(f"{scenario.title}: score {score.score:.0f}/100", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _card(scenario: Scenario, score: Score) -> str:
    """The score card as text (top of the PNG)."""
    lines = [f"SCORE {score.score:.0f}/100   scenario {scenario.name}   session {score.session_id}", ""]
    for r in score.responses:
        when = "" if r.time_to_act_s is None else f" after {r.time_to_act_s:.0f} s"
        lines.append(f"{'MET   ' if r.met else 'MISSED'} {r.text}{when}  ({r.points:g} pts){'' if r.met else ' - ' + r.note}")
    acks = [f"{a.alarm_id} {'ack ' + format(a.acked_t - a.raised_t, '.0f') + ' s' if a.acked_t is not None else 'not acked'}"
            for a in score.alarms[:6]]
    lines += ["", "alarms: " + ("; ".join(acks[:3]) or "none")] + (["        " + "; ".join(acks[3:])] if acks[3:] else [])
    oos = "; ".join(f"{k} {v / 60:.0f} min" for k, v in score.out_of_spec_s.items()) or "no spec"
    lines.append(f"out of spec: {oos};  off-spec Tb product {score.off_spec_kg:.3f} kg")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.0f}"


def write_report(scenario: Scenario, session: TrainingSession, rec: Recorder, score: Score,
                 out_dir: Path | str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = _png(scenario, session, rec, score)
    (out_dir / "trends.png").write_bytes(png)
    e = html.escape
    resp = "".join(
        f"<tr><td>{e(r.text)}</td><td>{'✔' if r.met else '✘'}</td><td>{_fmt(r.time_to_act_s)}</td>"
        f"<td>{r.points:g}</td><td>{e(r.note)}</td></tr>" for r in score.responses)
    alarms = "".join(
        f"<tr><td>{e(a.alarm_id)}</td><td>{a.raised_t:.0f}</td><td>{_fmt(a.acked_t)}</td>"
        f"<td>{_fmt(None if a.acked_t is None else a.acked_t - a.raised_t)}</td></tr>" for a in score.alarms)
    spec = "".join(f"<tr><td>{e(k)}</td><td>{v / 60:.0f}</td></tr>" for k, v in score.out_of_spec_s.items())
    pen = "".join(f"<tr><td>{e(k)}</td><td>−{v:.1f}</td></tr>" for k, v in score.penalties.items())
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(scenario.title)}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}.score{{font-size:2em}}</style></head><body>
<h1>Trainee report: {e(scenario.title)}</h1>
<p>Scenario <code>{e(scenario.name)}</code>, session <code>{e(session.session_id)}</code>, initial condition
<code>{e(scenario.initial)}</code>, {scenario.duration_s / 60:.0f} plant-minutes. {e(scenario.teaches)}</p>
<p class="score">Score: <b>{score.score:.0f}</b> / 100</p>
<h2>Expected responses</h2><table><tr><th>response</th><th>met</th><th>time to act, s</th><th>points</th><th></th></tr>{resp}</table>
<h2>Alarms</h2><table><tr><th>alarm</th><th>raised, s</th><th>acknowledged, s</th><th>time to acknowledge, s</th></tr>{alarms}</table>
<h2>Time out of spec</h2><table><tr><th>tag</th><th>minutes</th></tr>{spec}</table>
<p>Tb product made: {score.product_kg:.2f} kg, of which off-spec (purity below
{scenario.off_spec.tb_purity_min_percent:g} %): <b>{score.off_spec_kg:.3f} kg</b>.</p>
<h2>Penalties</h2><table>{pen}</table>
<h2>Trends</h2><img alt="trends" src="data:image/png;base64,{base64.b64encode(png).decode()}" style="width:100%">
</body></html>"""
    path = out_dir / "report.html"
    path.write_text(body)
    return path
