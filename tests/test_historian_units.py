"""Historian parts without a database server: line protocol, spool, recorder, annotations, settings."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from pilot.historian.annotations import ALARM_TAG, GrafanaAnnotations
from pilot.historian.base import Point
from pilot.historian.influx1 import Influx1Sink
from pilot.historian.lineproto import Encoder, series_key
from pilot.historian.recorder import MemorySpool, Recorder
from pilot.historian.settings import HistorianSettings, make_sink
from pilot.historian.spool import Spool
from pilot.historian.sqlite import SqliteSink, read_points, read_series
from twin.points import (
    FreshSamples,
    alarm_point,
    decision_points,
    estimate_points,
)
from twin.signals import Quality, Sample


def pts(n, t0=0.0, tag="T"):
    return [Point("process", tag, "u", 0.1 * i, t0 + i) for i in range(n)]


# -- line protocol -----------------------------------------------------------------------------
def test_line_protocol_escaping_precision_and_exact_floats():
    p = Point("process", "A B,C=D", "cell 1", 0.1 + 0.2, 1.0005, "uncertain", "train 7")
    assert series_key(p) == r"process,quality=uncertain,session=train\ 7,tag=A\ B\,C\=D,unit=cell\ 1"
    # 1.0005 s * 1000 = 1000.5 exactly in binary: Python's round() goes to even
    assert Encoder("ms").encode([p]) == (series_key(p) + " value=0.30000000000000004 1000").encode()
    assert Encoder("ms").lines([Point("m", "t", "u", 1.0, 2.0015)])[0].endswith(" 2002")
    assert Encoder("s").lines([Point("m", "t", "u", 2.0, 1.6e9 + 0.4)])[0].endswith(" value=2.0 1600000000")
    assert Encoder("ns").lines([Point("m", "t", "u", 1e-300, 1.5)])[0].endswith(" value=1e-300 1500000000")
    assert Encoder("us").lines([Point("m", "t", "", -3, 2.0)]) == ["m,quality=good,tag=t value=-3.0 2000000"]
    with pytest.raises(ValueError):
        Encoder("h")


def test_non_finite_values_are_stored_without_a_value_field_never_dropped():
    enc = Encoder()
    lines = enc.lines([Point("m", "t", "u", v, 1.0) for v in (1.0, float("nan"), float("inf"), -float("inf"))])
    assert lines == ["m,quality=good,tag=t,unit=u value=1.0 1000"] + ["m,quality=good,tag=t,unit=u status=0i 1000"] * 3
    assert enc.no_value == 3


def test_point_builders_follow_the_schema():
    est = estimate_points("extraction", 5.0, {"SX.RAFF.Tb.EST": 1.0}, {"SX.RAFF.Tb": 0.5}, {"SX.RAFF.Tb": 2.0})
    assert [p.tag for p in est] == ["SX.RAFF.Tb.EST", "SX.RAFF.Tb.INNOV", "SX.RAFF.Tb.NIS"]
    dec = decision_points("cell1", 5.0, {"CELL1.CURRENT_SP": 150}, {"CELL1.CURRENT_SP": 140}, 0.012, True)
    assert {p.tag: p.value for p in dec} == {"CELL1.CURRENT_SP.PROPOSED": 150, "CELL1.CURRENT_SP.APPLIED": 140,
                                             "MPC.cell1.SOLVE_MS": 12.0, "MPC.cell1.HELD": 1.0}
    assert alarm_point("X.HI", "u", False, 1.0).value == 0.0
    fresh = FreshSamples()
    assert len(fresh({"A": Sample(1.0, 10.0), "B": Sample(2.0, 10.0, Quality.BAD)})) == 2
    assert list(fresh({"A": Sample(1.0, 10.0), "B": Sample(2.0, 70.0)})) == ["B"]


# -- spool -------------------------------------------------------------------------------------
def test_spool_is_fifo_and_survives_reopen(tmp_path):
    s = Spool(tmp_path / "s.sqlite")
    for k in range(3):
        s.append(pts(10, t0=100 * k))
    s.close()
    s = Spool(tmp_path / "s.sqlite")
    assert (s.pending_batches, s.pending_points) == (3, 30)
    got = []
    while (item := s.peek()) is not None:
        got += item[1]
        s.ack(item[0])
    assert got == pts(10) + pts(10, 100) + pts(10, 200)  # order and exact values
    assert s.pending_points == 0 and s.bytes == 0


def test_spool_overflow_drops_oldest_with_warning(tmp_path, caplog):
    s = Spool(tmp_path / "s.sqlite", max_bytes=3000)
    with caplog.at_level(logging.WARNING):
        for k in range(10):
            s.append(pts(20, t0=1000 * k))
    assert s.bytes <= 3000 and s.dropped_points > 0
    assert s.dropped_points + s.pending_points == 200
    assert "dropped the oldest" in caplog.text
    assert s.peek()[1][0].time_s > 0  # the first batch is gone: oldest dropped, newest kept


# -- recorder ----------------------------------------------------------------------------------
def test_recorder_into_embedded_store_batches_by_size_and_time(tmp_path):
    sink = SqliteSink(tmp_path / "h.sqlite")
    rec = Recorder(sink, batch_size=100, flush_interval_s=0.2).start()
    rec.record_many(pts(250, tag="A"))
    time.sleep(0.6)  # the last 50 go out on the time trigger, without flush()
    assert rec.stats.written == 250
    rec.record(Point("process", "B", "u", 7.0, 1.0))
    rec.close()
    s = read_series(tmp_path / "h.sqlite", "A")
    assert list(s.value) == [p.value for p in pts(250)]
    assert read_series(tmp_path / "h.sqlite", "B").value.tolist() == [7.0]


def test_recorder_never_blocks_when_database_is_down(tmp_path):
    # a server that accepts connections and never answers: the worst case for a writer
    import socket

    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    url = f"http://127.0.0.1:{hang.getsockname()[1]}"
    spool = Spool(tmp_path / "s.sqlite")
    rec = Recorder(Influx1Sink(url=url, database="x", timeout_s=2), spool, batch_size=1000,
                   max_queued_points=5000).start()
    worst = 0.0
    for k in range(60):
        t0 = time.perf_counter()
        rec.record_many(pts(1000, t0=1000 * k))
        worst = max(worst, time.perf_counter() - t0)
    # the server never answers (the sink's timeout is 2 s): a caller that waited on it would take
    # >= 2 s; an overflow batch goes to the fsynced disk spool, which a loaded disk may make slow
    assert worst < 1.0, f"record_many took {worst * 1e3:.1f} ms: it waited on the database"
    rec.flush(10)
    assert rec.stats.spooled + rec.stats.written == 60_000 and rec.stats.written == 0
    rec.close(timeout_s=5)
    assert Spool(tmp_path / "s.sqlite").pending_points == 60_000
    hang.close()


def test_memory_spool_bounded():
    m = MemorySpool(max_points=25)
    for k in range(5):
        m.append(pts(10, 10 * k))
    assert m.pending_points <= 25 and m.dropped_points == 30


# -- Grafana annotations -----------------------------------------------------------------------
class FakeGrafana(BaseHTTPRequestHandler):
    """Grafana's POST /api/annotations as documented: 200 + {"id", "message"}; fails on demand."""

    received: ClassVar[list[dict]] = []
    fail_next = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if FakeGrafana.fail_next:
            FakeGrafana.fail_next -= 1
            self.send_response(503)
            self.end_headers()
            return
        ok = self.path == "/api/annotations" and self.headers["Authorization"] == "Bearer glsa_x"
        if ok:
            FakeGrafana.received.append(body)
        data = json.dumps({"id": len(FakeGrafana.received), "message": "Annotation added"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_alarm_transitions_become_grafana_annotations():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"PILOT_GRAFANA_URL": f"http://127.0.0.1:{server.server_address[1]}", "PILOT_GRAFANA_TOKEN": "glsa_x"}
        assert GrafanaAnnotations.from_env({}) is None
        ann = GrafanaAnnotations.from_env(env)
        FakeGrafana.fail_next = 1  # Grafana hiccups once: the recorder retries, nothing lost
        rec = Recorder(ann, batch_size=10, flush_interval_s=0.05, retry_min_s=0.05).start()
        rec.record_many([Point("process", "X", "u", 1.0, 1.0), alarm_point("CELL1.TEMP.HI", "cell1", True, 10.5),
                         alarm_point("CELL1.TEMP.HI", "cell1", False, 70.0)])
        assert rec.drain(5)
        rec.close()
        assert [b["tags"] for b in FakeGrafana.received] == [
            [ALARM_TAG, "cell1", "CELL1.TEMP.HI", "raised"], [ALARM_TAG, "cell1", "CELL1.TEMP.HI", "cleared"]]
        assert FakeGrafana.received[0]["time"] == 10500
    finally:
        server.shutdown()


def test_settings_from_environment(tmp_path):
    s = HistorianSettings.from_env({})
    assert not s.uses_influx and isinstance(make_sink(s, tmp_path), SqliteSink)
    s = HistorianSettings.from_env({"PILOT_INFLUX_URL": "http://h:8086", "PILOT_INFLUX_TOKEN": "t"})
    assert s.version == 2 and type(make_sink(s)).__name__ == "Influx2Sink"
    s = HistorianSettings.from_env({"PILOT_INFLUX_URL": "http://h:8086", "PILOT_INFLUX_DATABASE": "plant"})
    assert s.version == 1 and make_sink(s).settings.database == "plant"
    with pytest.raises(ValueError, match="PILOT_INFLUX_PRECISION"):
        HistorianSettings.from_env({"PILOT_INFLUX_PRECISION": "minutes"})


# -- the text field ----------------------------------------------------------------------------
TEXTS = ['ack by "op1"', "back\\slash, comma=equals", "two\nlines", "Dy³⁺ ü", ""]


def text_points() -> list[Point]:
    return [Point("audit", "Operator.Acknowledge", "cell1", float(i), 100.0 + i, "good", "", t)
            for i, t in enumerate(TEXTS)]


def test_text_is_a_string_field_only_when_set():
    lines = Encoder("s").lines(text_points())
    key = "audit,quality=good,tag=Operator.Acknowledge,unit=cell1 value="
    assert lines[0] == key + '0.0,text="ack by \\"op1\\"" 100'
    assert lines[1] == key + '1.0,text="back\\\\slash, comma=equals" 101'
    assert lines[2] == key + '2.0,text="two\nlines" 102'
    assert lines[4] == key + "4.0 104"  # empty text: no field at all


def test_text_round_trips_through_the_embedded_store(tmp_path):
    sink = SqliteSink(tmp_path / "h.sqlite")
    sink.open()
    sink.write_batch(text_points() + pts(3))
    sink.close()
    assert read_points(tmp_path / "h.sqlite", measurement="audit") == text_points()
    assert [p.text for p in read_points(tmp_path / "h.sqlite", tag="T")] == ["", "", ""]


def test_a_store_without_the_text_column_opens_and_gains_it(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema before the text field
        db.execute("CREATE TABLE points (measurement TEXT NOT NULL, tag TEXT NOT NULL, unit TEXT NOT NULL,"
                   " quality TEXT NOT NULL, session TEXT NOT NULL, time_s REAL NOT NULL, value REAL)")
        db.execute("INSERT INTO points VALUES ('process','T','u','good','',1.0,2.5)")
    db.close()
    assert read_points(path) == [Point("process", "T", "u", 2.5, 1.0)]  # read-only, no column yet
    sink = SqliteSink(path)
    sink.open()
    sink.write_batch(text_points()[:1])
    sink.close()
    assert [p.text for p in read_points(path)] == ["", TEXTS[0]]
    assert read_series(path, "T").value.tolist() == [2.5]


def test_text_survives_the_disk_spool_and_old_rows_replay(tmp_path):
    s = Spool(tmp_path / "s.sqlite")
    s.append(text_points())
    s._db.execute("INSERT INTO batches (n, bytes, payload) VALUES (1, 40, ?)",  # a row of an older version
                  (b'[["process","T","u",1.5,2.0,"good",""]]',))
    s.close()
    s = Spool(tmp_path / "s.sqlite")
    bid, batch, run = s.peek()
    assert batch == text_points() and run == ""
    s.ack(bid)
    assert s.peek()[1] == [Point("process", "T", "u", 1.5, 2.0)]
    s.close()


def test_alarm_text_goes_into_the_annotation():
    body = GrafanaAnnotations.body(Point("alarm", "CELL1.TEMP.HI", "cell1", 1.0, 2.0, text="shelved by op1"))
    assert body["text"] == "CELL1.TEMP.HI raised (cell1): shelved by op1"


def test_settings_hide_secrets_and_read_them_from_files(tmp_path):
    (tmp_path / "token").write_text("s3cret-token-from-a-file\n")
    s = HistorianSettings.from_env({"PILOT_INFLUX_URL": "http://h:8086",
                                    "PILOT_INFLUX_TOKEN_FILE": str(tmp_path / "token")})
    assert s.token == "s3cret-token-from-a-file" and s.version == 2
    assert "s3cret" not in repr(s) and "s3cret" not in repr(make_sink(s).settings)
    with pytest.raises(ValueError, match="PILOT_INFLUX_PASSWORD_FILE names .*missing"):
        HistorianSettings.from_env({"PILOT_INFLUX_PASSWORD_FILE": str(tmp_path / "missing")})


def test_spool_keeps_status_nan_and_the_run_of_each_batch(tmp_path):
    bad = [Point("process", "T", "u", float("nan"), 2.0, "bad", status=0x80050000),
           Point("estimate", "T.EST", "u", 1.25, 2.0, text="x", status=0x40000000)]
    s = Spool(tmp_path / "s.sqlite")
    s.append(bad, "run-a")
    s.append(pts(2), "run-b")
    s.close()
    s = Spool(tmp_path / "s.sqlite")
    bid, batch, run = s.peek()
    assert run == "run-a" and [p.status for p in batch] == [0x80050000, 0x40000000]
    assert batch[0].value != batch[0].value and batch[1] == bad[1]  # NaN round-trips as NaN
    s.ack(bid)
    assert s.peek()[1:] == (pts(2), "run-b")
    s.close()
