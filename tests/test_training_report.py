"""The report as a training record: the score of a constructed session record against its closed
form (responses, spec, off-spec product relative to the session's production, unacknowledged alarms),
alarm occurrences from an alarm journal, and `pilot train run` writing the record (trainee,
instructor, dates, config version, headers, min:s, print stylesheet, PDF) for a shipped scenario."""

from __future__ import annotations

import hashlib
import html
import re
from datetime import datetime, timezone
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from controllers.alarms_support import AlarmState, JournalEntry, Priority
from pilot.cli import app
from pilot.training.report import (
    AlarmRow,
    SessionRecord,
    alarm_rows,
    config_sha256,
    score_record,
)
from pilot.training.report_pages import mmss, record_pages
from pilot.training.scenario import Scenario
from pilot.training.session import Action, TrainingSession
from pilot_config import default_config_path, load_config

TICK = 60.0
END = 7200.0


def _scenario(**extra) -> Scenario:
    return Scenario.model_validate({
        "name": "constructed", "title": "constructed record", "duration_s": END,
        "responses": [
            {"id": "ack_a", "kind": "acknowledge", "alarm": "A", "after_alarm": "A", "within_s": 60, "points": 40},
            {"id": "cut_x", "kind": "setpoint", "tag": "X", "below": 5, "after_alarm": "A", "within_s": 300,
             "points": 60}],
        "spec": [{"tag": "X", "high": 10, "penalty_per_min": 0.1, "max_penalty": 30}],
        "off_spec": {"points": 20}, **extra})


def _record(alarms, actions=(), off_spec_kg=61 / 120 * 2.0, product_kg=2.0) -> SessionRecord:
    t = tuple(TICK * k for k in range(int(END / TICK) + 1))  # 121 samples, the first the start state
    x = tuple(12.0 if 1 <= k <= 61 else 8.0 for k in range(len(t)))  # 61 ticks above the high spec
    return SessionRecord(scenario="constructed", session_id="train-test", t_end=END, tick_s=TICK,
                         alarms=tuple(alarms), actions=tuple(actions), t=t, values={"X": x},
                         off_spec_kg=off_spec_kg, product_kg=product_kg, trainee="alice", instructor="bob")


def test_score_of_a_constructed_record_closed_form():
    alarms = [AlarmRow("A", 600.0, 630.0, "alice"),             # acknowledged after 30 s
              AlarmRow("C", 1200.0, None, "alice", 1500.0),     # shelved after 5 min
              AlarmRow("B", 3600.0, None, None)]                # never acknowledged: 60 min to the end
    actions = [Action(t=700, kind="write", args={"values": {"X": 3.0}}, by="instructor"),  # not the trainee's
               Action(t=1000, kind="write", args={"values": {"X": 3.0}}, by="alice")]      # 400 s > 300 s
    s = score_record(_scenario(), _record(alarms, actions))
    assert s.met == ["ack_a"]
    cut = s.responses[1]
    assert not cut.met and cut.action_t == 1000 and cut.note == "too late (6:40 > 5:00)"
    assert s.out_of_spec_s == {"X": 61 * 60.0}
    assert s.penalties["out of spec: X"] == pytest.approx(0.1 * 61)
    # 61 min off spec in a steady 2 h session: about half the product points
    assert s.penalties["off-spec Tb product"] == pytest.approx(20 * 61 / 120)
    assert s.penalties["unacknowledged alarms"] == pytest.approx(1.0 * 1 + 0.05 * (0.5 + 5 + 60))
    assert s.score == round(40 - 6.1 - 20 * 61 / 120 - (1 + 0.05 * 65.5), 1) == 19.5


def test_score_penalties_configurable_and_capped():
    alarms = [AlarmRow(f"Z{k}", 0.0, None, None) for k in range(10)] + [AlarmRow("A", 600.0, 610.0, "alice")]
    actions = [Action(t=660, kind="write", args={"values": {"X": 2.0}}, by="trainee")]
    sc = _scenario(unacknowledged={"points_per_alarm": 0.5, "points_per_min": 0.01, "max_penalty": 6})
    s = score_record(sc, _record(alarms, actions, off_spec_kg=0.0))
    assert s.met == ["ack_a", "cut_x"] and s.responses[1].time_to_act_s == 60
    assert s.penalties["unacknowledged alarms"] == 6  # 10 · 0.5 + 0.01 · (10 · 120 + 1/6) min > 6
    assert s.penalties["off-spec Tb product"] == 0
    assert s.score == round(100 - 6.1 - 6, 1)
    none_made = score_record(sc, _record(alarms, actions, off_spec_kg=0.0, product_kg=0.0))
    assert none_made.penalties["off-spec Tb product"] == 0 and none_made.off_spec_fraction == 0


def _entry(t, alarm, to, note="", operator=None):
    return JournalEntry(t, "X", alarm, AlarmState.NORMAL, to, 0.0, Priority.HIGH, operator, note)


def test_alarm_rows_from_an_alarm_journal():
    journal = [_entry(60, "A", AlarmState.UNACK_ACTIVE), _entry(120, "A", AlarmState.RTN_UNACK),
               _entry(180, "A", AlarmState.UNACK_ACTIVE),  # raised again while unacknowledged: the same row
               _entry(240, "A", AlarmState.NORMAL, "acknowledged", "alice"),
               _entry(300, "A", AlarmState.UNACK_ACTIVE), _entry(360, "A", AlarmState.SHELVED, "shelved until t=960", "alice"),
               _entry(420, "B", AlarmState.UNACK_ACTIVE)]
    rows = alarm_rows(journal)
    assert rows == [AlarmRow("A", 60, 240, "alice"), AlarmRow("A", 300, None, "alice", 360), AlarmRow("B", 420, None, None)]
    assert [r.unacknowledged for r in rows] == [False, False, True]
    assert [r.standing_s(600) for r in rows] == [180, 60, 180]


def test_mmss():
    assert [mmss(x) for x in (0, 45, 59.6, 60, 3660, -90, 7200.4)] == ["0:00", "0:45", "1:00", "1:00", "61:00",
                                                                       "-1:30", "120:00"]


def test_long_tables_continue_on_new_pages():
    alarms = [AlarmRow(f"ALARM.{k:03d}.HI", 60.0 * k, None, None) for k in range(120)]
    s = score_record(_scenario(), _record(alarms))
    figs = record_pages(_scenario(), s, {"X": "L/h"}, [("trainee", "alice")])
    texts = [t.get_text() for f in figs for ax in f.axes for tab in ax.tables for t in
             (c.get_text() for c in tab.get_celld().values())]
    assert len(figs) >= 5  # record + responses, alarms over at least three pages, trends
    assert all(f"ALARM.{k:03d}.HI" in texts for k in range(120))
    assert texts.count("alarm") == len(figs) - 2  # the header repeated on every page of the table


class _Tables(HTMLParser):
    """The tables of an HTML page: a list of rows of (tag, text) cells."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = [tag, ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(tuple(self._cell))
            self._cell = None


def test_train_run_writes_the_training_record(tmp_path):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    r = CliRunner().invoke(app, ["train", "run", "sx-organic-pump-trip", "--trainee-actions", "sx-organic-pump-trip",
                                 "--trainee", "Ann Example", "--instructor", "Bo Instructor", "--report",
                                 str(tmp_path / "rep"), "--snapshot", str(tmp_path / "end.json")])
    assert r.exit_code == 0, r.output
    assert "Ann Example" in r.output and "min:s" in r.output
    text = (tmp_path / "rep" / "report.html").read_text()
    started = datetime.fromisoformat(re.search(r"<th>started, UTC</th><td>([^<]+)</td>", text).group(1))
    assert started.utcoffset().total_seconds() == 0 and before <= started <= datetime.now(timezone.utc)
    assert "<th>trainee</th><td>Ann Example</td>" in text and "<th>instructor</th><td>Bo Instructor</td>" in text
    file_hash = hashlib.sha256(default_config_path().read_bytes()).hexdigest()[:12]
    assert config_sha256(load_config())[:12] in text and file_hash in text
    assert "@media print" in text and "size:A4" in text and "section+section{break-before:page" in text
    assert "<span class=met>✔ met</span>" in text and "✘ still unacknowledged" in text  # SX.ORG.FLOW.LO
    parser = _Tables()
    parser.feed(text)
    for table in parser.tables[1:]:  # every column headed; every time header in min:s
        header = table[0]
        assert all(tag == "th" and label.strip() for tag, label in header)
        assert all(len(row) == len(header) for row in table)
        assert not any(label.endswith(", s") or "minutes" in label for _, label in header)
    alarms = next(t for t in parser.tables if t[0][0][1] == "alarm")
    ll = next(row for row in alarms if row[0][1] == "SX.ORG.FLOW.LL")
    assert [c for _, c in ll[1:5]] == ["12:00", "12:00", "0:00", "Ann Example"]  # acknowledged by the trainee
    pdf = (tmp_path / "rep" / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type /Page\b(?!s)", pdf)) == 3
    assert html.escape("Ann Example") in text and (tmp_path / "rep" / "trends.png").stat().st_size > 10_000
    restored = TrainingSession.restore(tmp_path / "end.json")  # the record's fields survive a snapshot
    assert (restored.trainee, restored.instructor) == ("Ann Example", "Bo Instructor")
