"""The historian records the truth: Bad points stored (InfluxDB and SQLite), honest counters with the
database down and back, a spool that survives kill -9, runs that never overwrite each other.

Against the real InfluxDB 1.x (the ``influx`` fixture); an outage is a TCP proxy in front of it
that this test closes and reopens.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controllers.loop import ControlLoop
from opcua_server.audit import AuditJournal
from opcua_server.node_interop import free_port
from opcua_server.operator import OperatorServer
from opcua_server.server_security import ServerSecurity
from opcua_server.users import UserDirectory
from pilot.cli import app
from pilot.dashboards import model as dash
from pilot.historian.base import Point
from pilot.historian.influx1 import Influx1Sink
from pilot.historian.lineproto import Encoder
from pilot.historian.recorder import (
    DROP_REFUSED,
    DROP_SPOOL_FULL,
    MemorySpool,
    Recorder,
)
from pilot.historian.runs import new_run_id
from pilot.historian.spool import Spool
from pilot.historian.sqlite import SqliteSink, read_points, read_runs, read_series
from pilot_config import load_config
from twin.points import FreshSamples
from twin.signals import Quality, Sample

ROOT = Path(__file__).resolve().parents[1]
BAD_COMM = 0x80050000  # BadCommunicationError
UNCERTAIN = 0x40000000
T0 = 1.75e9


@pytest.fixture()
def db(influx_db):
    return influx_db


def outage(tag: str = "A", t_down: float = T0 + 10.5, t_up: float = T0 + 40.2) -> list[Point]:
    """Good values 0..9 s, the Bad marks of an outage, good values 41..49 s (as the bridge gives them)."""
    pts = [Point("process", tag, "u", float(i), T0 + i) for i in range(10)]
    pts += [Point("process", tag, "u", math.nan, t, "bad", status=BAD_COMM) for t in (t_down, t_up)]
    return pts + [Point("process", tag, "u", float(i), T0 + i) for i in range(41, 50)]


def check(c: dict) -> None:
    """The invariant: every point handed in (or inherited) is written, dropped or waiting."""
    assert c["recorded"] + c["inherited"] == c["written"] + sum(c["dropped"].values()) + c["backlog"], c


# -- encodings -----------------------------------------------------------------------------------
def test_line_protocol_of_bad_uncertain_and_derived_points():
    enc = Encoder("ms")
    lines = enc.lines([
        Point("process", "A", "u", math.nan, 2.0, "bad", status=BAD_COMM),
        Point("process", "A", "u", 1.5, 2.0, "uncertain", status=UNCERTAIN),
        Point("decision", "SP.REFUSED", "u", math.nan, 2.0, "bad", text='no "access"'),
        Point("process", "B", "u", math.inf, 2.0),
        Point("estimate", "A.EST", "u", 3.0, 2.0),
    ], run="r1")
    assert lines == [
        f"process,quality=bad,tag=A,unit=u status={BAD_COMM}i 2000",
        f"process,quality=uncertain,tag=A,unit=u value=1.5,status={UNCERTAIN}i 2000",
        'decision,quality=bad,run=r1,tag=SP.REFUSED,unit=u status=0i,text="no \\"access\\"" 2000',
        "process,quality=good,tag=B,unit=u status=0i 2000",  # a non-finite value is no value, never a drop
        "estimate,quality=good,run=r1,tag=A.EST,unit=u value=3.0 2000",
    ]
    assert enc.no_value == 3
    assert Encoder().lines([Point("estimate", "A.EST", "u", 3.0, 2.0)]) == [
        "estimate,quality=good,tag=A.EST,unit=u value=3.0 2000"]  # no run given: no run tag


def test_bad_points_in_influxdb_and_the_dashboard_query_shows_the_gap(db):
    pts = outage() + [Point("process", "A", "u", math.nan, T0 + 9, "bad", status=BAD_COMM)]  # at a good time
    rec = Recorder(Influx1Sink(url=db.settings.url, database=db.settings.database), run_id="r").start()
    rec.record_many(pts)
    assert rec.drain(10)
    rec.close()
    c = rec.counters()
    check(c)
    assert c["written"] == c["recorded"] == len(pts) and c["backlog"] == 0 and not c["dropped"]
    res = db.query('SELECT "value", "status" FROM "process" GROUP BY "quality"', epoch="ms")[0]["series"]
    by_q = {s["tags"]["quality"]: s["values"] for s in res}
    assert by_q["bad"] == [[round((T0 + t) * 1000), None, BAD_COMM] for t in (9, 10.5, 40.2)]
    good = by_q["good"]  # the Bad mark at 9 s did not overwrite the good value at 9 s (another series)
    assert len(good) == 19 and [round((T0 + 9) * 1000), 9.0, None] in good
    q = dash.series_query("process", "\"tag\" = 'A'", gaps=True)
    q = q.replace("$timeFilter", f"time >= {int(T0)}s AND time < {int(T0) + 60}s").replace("$__interval", "5s")
    rows = db.query(q, epoch="s")[0]["series"][0]["values"]
    values = {int(t - T0): v for t, v, _status in rows}
    # buckets 0 and 5 hold values, 10 only Bad marks: null (the line breaks), 15-35 no row, 40 and 45 values
    assert values == {0: 2.0, 5: 7.0, 10: None, 40: 42.5, 45: 47.0}


def test_sqlite_stores_bad_points_as_null_with_their_status(tmp_path):
    path = tmp_path / "h.sqlite"
    rec = Recorder(SqliteSink(path), run_id="r").start()
    rec.record_many(outage() + [Point("process", "C", "u", math.inf, T0, "good")])
    assert rec.flush(10)
    rec.close()
    check(rec.counters())
    with sqlite3.connect(path) as con:
        rows = con.execute("SELECT time_s, value, quality, status FROM points WHERE quality = 'bad'").fetchall()
        assert rows == [(T0 + 10.5, None, "bad", BAD_COMM), (T0 + 40.2, None, "bad", BAD_COMM)]
        assert con.execute("SELECT value, status FROM points WHERE tag = 'C'").fetchall() == [(None, 0)]
    s = read_series(path, "A")
    assert len(s.value) == 21 and s.quality.count("bad") == 2
    assert [math.isnan(v) for v, q in zip(s.value, s.quality) if q == "bad"] == [True, True]
    bad = [p for p in read_points(path, "process", "A") if p.quality == "bad"]
    assert [p.status for p in bad] == [BAD_COMM, BAD_COMM] and all(math.isnan(p.value) for p in bad)


def test_fresh_samples_pass_a_bad_mark_once_and_never_repeat_a_held_good_value():
    fresh = FreshSamples()
    assert list(fresh({"A": Sample(1.0, 10.0)})) == ["A"]
    assert list(fresh({"A": Sample(math.nan, 10.0, Quality.BAD, BAD_COMM)})) == ["A"]  # same time, new status
    assert list(fresh({"A": Sample(math.nan, 10.0, Quality.BAD, BAD_COMM)})) == []  # the same mark again
    assert list(fresh({"A": Sample(math.nan, 12.5, Quality.BAD, BAD_COMM)})) == ["A"]  # the end of the outage
    assert list(fresh({"A": Sample(1.0, 10.0)})) == []  # the PLC still holds the value of 10 s
    assert list(fresh({"A": Sample(1.5, 13.0)})) == ["A"]
    assert list(fresh({"A": Sample(1.5, 3.0)})) == ["A"]  # a restarted PLC whose clock stepped back


# -- counters ------------------------------------------------------------------------------------
class Proxy:
    """TCP proxy to ``upstream`` on a free loopback port; ``down()`` closes the port and every
    connection through it (an outage of the database as the recorder sees it), ``up()`` reopens it."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream, self.port = upstream, free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def down(self) -> None:
        ls, self._listener = self._listener, None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in ([ls] if ls is not None else []) + conns:
            self._shut(s)
            s.close()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            Proxy._shut(a)
            Proxy._shut(b)

    @staticmethod
    def _shut(s: socket.socket) -> None:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _chunk(k: int, n: int = 200) -> list[Point]:
    return ([Point("process", f"T{i % 20}", "u", float(i), T0 + k + i / n) for i in range(n // 2)]
            + [Point("estimate", f"T{i % 20}.EST", "u", float(-i), T0 + k + i / n) for i in range(n // 2)])


def test_counters_add_up_with_influxdb_down_and_back(db, tmp_path):
    host, port = db.settings.url.removeprefix("http://").split(":")
    proxy = Proxy((host, int(port)))
    proxy.up()
    rec = Recorder(Influx1Sink(url=proxy.url, database=db.settings.database, timeout_s=2),
                   Spool(tmp_path / "spool.sqlite"), batch_size=150, flush_interval_s=0.1,
                   retry_min_s=0.05, retry_max_s=0.2, run_id=new_run_id()).start()
    violations, done = [], threading.Event()

    def watch() -> None:  # the invariant holds whenever the counters are read, from any thread
        while not done.is_set():
            c = rec.counters()
            if c["recorded"] + c["inherited"] != c["written"] + sum(c["dropped"].values()) + c["backlog"]:
                violations.append(c)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        seen = []
        for k in range(30):
            if k == 10:
                proxy.down()
            if k == 20:
                proxy.up()
            rec.record_many(_chunk(k))
            check(rec.counters())  # at any moment, not only after a flush
            assert rec.flush(10)
            c = rec.counters()
            check(c)
            seen.append(c)
        assert seen[9]["spooled"] == 0 and seen[19]["spooled"] > 0 and seen[19]["backlog"] > 0
        assert rec.drain(30)
    finally:
        done.set()
        watcher.join(10)
        rec.close()
        proxy.down()
    assert not violations, violations[:3]
    c = rec.counters()
    check(c)
    assert c["recorded"] == c["written"] == 30 * 200 and c["backlog"] == 0 and not c["dropped"]
    assert c["replayed"] == c["spooled"] > 0
    n = db.query('SELECT count("value") FROM "process", "estimate"')[0]["series"]
    assert sum(s["values"][0][1] for s in n) == 30 * 200  # what the counters call written is in the database


def test_counters_count_every_drop_by_reason(db):
    # dead letters: a string "value" in this shard makes our float points a field-type conflict (400)
    db.write_body(f'process,tag=S value="text" {int(T0 * 1000)}'.encode())
    rec = Recorder(Influx1Sink(url=db.settings.url, database=db.settings.database), batch_size=10).start()
    rec.record_many([Point("process", "A", "u", float(i), T0 + i) for i in range(25)])
    assert rec.drain(10)
    rec.close()
    c = rec.counters()
    check(c)
    assert c["dropped"] == {DROP_REFUSED: 25} and c["written"] == 0
    # a memory spool over its bound, the database unreachable; what is left at close is lost, and said so
    dead = Influx1Sink(url=f"http://127.0.0.1:{free_port()}", database="x", timeout_s=1)
    rec = Recorder(dead, MemorySpool(max_points=300), batch_size=100, flush_interval_s=0.05,
                   retry_min_s=5.0).start()
    for k in range(10):
        rec.record_many(_chunk(k, 100))
        assert rec.flush(10)
        check(rec.counters())
    assert rec.counters()["dropped"][DROP_SPOOL_FULL] == 700
    rec.close(timeout_s=2)
    c = rec.counters()
    check(c)
    assert c["backlog"] == 0 and sum(c["dropped"].values()) == 1000 and c["written"] == 0


# -- kill -9 -------------------------------------------------------------------------------------
RECORD_TICKS_THEN_WAIT = """
import sys, time
from pilot.historian.base import Point
from pilot.historian.influx1 import Influx1Sink
from pilot.historian.recorder import Recorder
from pilot.historian.spool import Spool
dead_url, spool_path, t0 = sys.argv[1], sys.argv[2], float(sys.argv[3])
rec = Recorder(Influx1Sink(url=dead_url, database="x", timeout_s=1), Spool(spool_path), batch_size=100_000,
               flush_interval_s=3600, retry_min_s=60, run_id="deadrun").start()
for k in range(10_000):
    rec.record_many([Point("process", f"P{i}", "u", float(k), t0 + k) for i in range(25)]
                    + [Point("estimate", f"P{i}.EST", "u", float(k) + 0.5, t0 + k) for i in range(25)])
    rec.commit()  # the end of a tick
    print(k, flush=True)
    time.sleep(0.02)
"""


def test_kill_9_loses_at_most_the_tick_in_flight_and_the_replay_keeps_its_run(db, tmp_path):
    spool_path = tmp_path / "spool.sqlite"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(RECORD_TICKS_THEN_WAIT),
                              f"http://127.0.0.1:{free_port()}", str(spool_path), str(T0)],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        printed = -1
        for line in child.stdout:  # bounded: the child prints one line per tick, 10,000 at most
            printed = int(line)
            if printed >= 40:
                break
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == -signal.SIGKILL and printed >= 40
    spool = Spool(spool_path)
    rec = Recorder(Influx1Sink(url=db.settings.url, database=db.settings.database), spool,
                   run_id="newrun").start()
    assert rec.counters()["inherited"] >= 40 * 50
    assert rec.drain(30)
    rec.close()
    c = rec.counters()
    check(c)
    assert c["recorded"] == 0 and c["written"] == c["inherited"] == c["replayed"]
    res = db.query('SELECT count("value") FROM "process", "estimate" GROUP BY time(1s), "run" fill(none)',
                   epoch="s")[0]["series"]
    ticks = {}
    for s in res:
        assert s["tags"]["run"] in ("", "deadrun")  # process points carry no run; estimates keep the dead one's
        for t, n in s["values"]:
            ticks[int(t - T0)] = ticks.get(int(t - T0), 0) + n
    assert set(ticks) == set(range(len(ticks))) and set(ticks.values()) == {50}  # whole ticks, in order
    assert len(ticks) >= printed  # every tick committed before the last one printed is there


# -- runs ----------------------------------------------------------------------------------------
def test_a_restarted_run_never_overwrites_the_derived_points_of_a_dead_one(db, tmp_path):
    runs = [new_run_id(), new_run_id()]
    assert runs[0] != runs[1]
    path = tmp_path / "h.sqlite"
    for k, run in enumerate(runs):  # the same timestamps, the same PLC values, different estimates
        pts = ([Point("process", "A", "u", float(i), T0 + i) for i in range(20)]
               + [Point("estimate", "A.EST", "u", 100.0 * (k + 1) + i, T0 + i) for i in range(20)])
        for sink in (Influx1Sink(url=db.settings.url, database=db.settings.database), SqliteSink(path)):
            rec = Recorder(sink, run_id=run).start()
            rec.record_many(pts)
            assert rec.flush(10)
            rec.close()
            assert rec.counters()["written"] == 40
    est = db.query('SELECT "value" FROM "estimate" GROUP BY "run"')[0]["series"]
    assert {s["tags"]["run"]: [v for _, v in s["values"]] for s in est} == {
        runs[0]: [100.0 + i for i in range(20)], runs[1]: [200.0 + i for i in range(20)]}
    proc = db.query('SELECT count("value") FROM "process"')[0]["series"][0]["values"][0][1]
    assert proc == 20  # process points are the PLC's values at their time: written twice, stored once
    # the dashboards' queries aggregate over runs: one series per tag
    q = dash.series_query("estimate", "\"tag\" = 'A.EST'").replace("$timeFilter", "time > 0").replace(
        "$__interval", "1h")
    agg = db.query(q)[0]["series"]
    assert len(agg) == 1 and agg[0]["values"][0][1] == pytest.approx(159.5)
    assert read_runs(path) == runs
    assert [p.value for p in read_points(path, "estimate", run=runs[1])] == [200.0 + i for i in range(20)]
    assert len(read_points(path, "estimate")) == 40 and len(read_points(path, "process", run="")) == 40


# -- pilot historian status ----------------------------------------------------------------------
def test_historian_status_shows_the_counters_of_a_running_pilot_run(pki_pair, tmp_path):
    """The counters come from the operator server of the running loop (variable ``Historian``),
    read as a viewer over SignAndEncrypt; the spool backlog from the spool file."""
    server_pki, console = pki_pair(("operator", "urn:pilot-line:operator-test"), ("console", "urn:pilot-line:console"))
    shutil.copy(console.cert, server_pki.trusted / "console.der")
    shutil.copy(server_pki.cert, console.trusted / "operator.der")
    users = UserDirectory()
    users.add("vera", "vera-viewer-pass", "viewer")
    security = ServerSecurity(endpoints=(("Basic256Sha256", "SignAndEncrypt"),), pki=server_pki, users=users)
    rec = Recorder(SqliteSink(tmp_path / "h.sqlite"), run_id="20261201T190150Z-3f9a2c").start()
    rec.record_many(outage())
    assert rec.flush(10)
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    loop = ControlLoop(load_config(), target="live", session="live")
    ready, stop = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    async def serve() -> None:
        server = OperatorServer(loop, url, security, AuditJournal(tmp_path / "audit.jsonl"), historian=rec.counters)
        await server.start()
        ready.set()
        try:
            while not stop.is_set():
                await asyncio.sleep(0.05)
        finally:
            await server.stop()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # noqa: BLE001  (reported by the test below)
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(30) and not errors, errors
        spool = Spool(tmp_path / "spool.sqlite")
        spool.append(outage()[:7], "deadrun")
        spool.close()
        env = {"PILOT_OPCUA_PASSWORD": "vera-viewer-pass", "PILOT_INFLUX_URL": f"http://127.0.0.1:{free_port()}",
               "PILOT_INFLUX_VERSION": "1", "PILOT_HISTORIAN_SPOOL": str(tmp_path / "spool.sqlite")}
        result = CliRunner().invoke(app, ["historian", "status", "--endpoint", url, "--pki", str(console.root),
                                          "--user", "vera"], env=env)
    finally:
        stop.set()
        thread.join(30)
        rec.close()
    assert result.exit_code == 1, result.output  # the database does not answer (nothing on that port)
    text = " ".join(result.output.split())
    assert (f"pilot run at {url}: run 20261201T190150Z-3f9a2c: 21 recorded, 21 written, 0 spooled, "
            "0 replayed, 0 waiting; dropped: none") in text
    assert "7 points in 1 batches" in text and "not answering" in text
