"""The historian against the real InfluxDB 1.x (Debian's package, started by .ci/influxdb.sh).

Never skipped: if the server cannot start, the fixture raises and the tests fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from pilot.historian import ci_server
from pilot.historian.base import Point, SinkError
from pilot.historian.feed import parse_malfunction, simulated_run
from pilot.historian.influx1 import Influx1Sink, PointsRejected
from pilot.historian.influx2 import Influx2Sink
from pilot.historian.recorder import Recorder
from pilot.historian.spool import Spool
from pilot_config import load_config

ROOT = Path(__file__).resolve().parents[1]
OUTAGE_PORT = 18096  # a private instance for the stop/start tests




@pytest.fixture()
def db(influx_db):
    return influx_db


def key(p, mult=1000):
    return (p.measurement, p.tag, p.unit, p.quality, round(p.time_s * mult), float(p.value))


def read_back(sink: Influx1Sink, measurements=("process", "estimate", "decision", "alarm", "kpi")) -> list:
    out = []
    for m in measurements:
        res = sink.query(f'SELECT "value" FROM "{m}" GROUP BY "tag", "unit", "quality"')[0]
        for s in res.get("series", []):
            t = s["tags"]
            out += [(m, t["tag"], t["unit"], t["quality"], ts, float(v)) for ts, v in s["values"]]
    return out


def test_simulated_run_written_and_read_back_point_for_point(db):
    written = []
    rec = Recorder(Influx1Sink(url=db.settings.url, database=db.settings.database), batch_size=2000).start()
    for points in simulated_run(load_config(), 2 * 3600, epoch_s=1.7e9,
                                malfunction=parse_malfunction("heater_failure")):  # alarms too
        rec.record_many(points)
        written += points
    assert rec.drain(30)
    rec.close()
    keys = [key(p) for p in written]
    assert len(set(keys)) == len(keys) > 10_000
    assert {k[0] for k in keys} == {"process", "estimate", "decision", "alarm", "kpi"}
    back = read_back(db)
    assert len(back) == len(keys)
    assert sorted(back) == sorted(keys)  # every tag, time, value (exact float), quality
    assert rec.stats.written == len(written) and rec.stats.spooled == 0


def test_refused_batch_is_put_aside_not_retried(db, tmp_path):
    from pilot.historian.base import Point

    sink = Influx1Sink(url=db.settings.url, database=db.settings.database)
    with pytest.raises(PointsRejected):
        sink.write_body(b"junk,tag=A value=1 1000\njunk,tag=A value=notanumber 2000")
    # a string "value" in this shard: our float points now conflict (HTTP 400, field type conflict)
    sink.write_body(b'process,tag=S value="text" 1000')
    spool = Spool(tmp_path / "spool.sqlite")
    rec = Recorder(sink, spool, batch_size=10).start()
    rec.record_many([Point("process", "A", "u", float(i), 100.0 + i) for i in range(25)])
    assert rec.drain(10)
    rec.close()
    assert rec.stats.rejected == 25 and rec.stats.written == 0
    again = Spool(tmp_path / "spool.sqlite")
    assert again.pending_points == 0 and again.rejected_points() == 25


def test_unreachable_server_raises_sink_error():
    sink = Influx1Sink(url="http://127.0.0.1:9", database="x", timeout_s=1)
    from pilot.historian.base import Point

    with pytest.raises(SinkError):
        sink.write_batch([Point("process", "A", "u", 1.0, 1.0)])
    assert not sink.ping()


# -- InfluxDB 2.x/3.x client path -------------------------------------------------------------
class V2Gateway(BaseHTTPRequestHandler):
    """Serves /api/v2/write (org, bucket, precision, token) by forwarding to the real 1.x /write:
    the v2 sink's request is checked and its body stored by a real InfluxDB."""

    upstream = ""
    token = "t0ken"
    seen: ClassVar[list[dict]] = []

    def do_POST(self):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append({"path": url.path, "q": q, "auth": self.headers.get("Authorization")})
        if url.path != "/api/v2/write" or self.headers.get("Authorization") != f"Token {self.token}":
            self.send_response(401)
            self.end_headers()
            return
        sink = Influx1Sink(url=self.upstream, database=q["bucket"], precision=q["precision"])
        try:
            sink.write_body(body)
            self.send_response(204)
            self.end_headers()
        except PointsRejected as exc:
            data = json.dumps({"code": "invalid", "message": str(exc)}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_influx2_sink_through_client(db):
    V2Gateway.upstream = db.settings.url
    server = ThreadingHTTPServer(("127.0.0.1", 0), V2Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        sink = Influx2Sink(url=url, org="plant", bucket=db.settings.database, token="t0ken")
        sink.open()
        points = next(iter(simulated_run(load_config(), 0, epoch_s=1.7e9)))
        sink.write_batch(points)
        assert sorted(read_back(db)) == sorted(key(p) for p in points)
        assert V2Gateway.seen[-1]["q"] == {"org": "plant", "bucket": db.settings.database, "precision": "ms"}
        with pytest.raises(PointsRejected):
            sink.write_body(b"process,tag=A value=oops 1")
        sink.close()
        bad = Influx2Sink(url=url, org="plant", bucket="b", token="wrong")
        bad.open()
        with pytest.raises(SinkError) as info:
            bad.write_batch(points)
        assert not isinstance(info.value, PointsRejected)
        bad.close()
    finally:
        server.shutdown()
    down = Influx2Sink(url="http://127.0.0.1:9", token="x", timeout_s=1)
    down.open()
    with pytest.raises(SinkError):
        down.write_batch(points)
    down.close()


def test_text_field_round_trips_through_spool_and_influxdb(db, tmp_path):
    """Operator texts (quotes, backslash, comma, equals, newline, non-ASCII) come back exactly,
    written directly and replayed from the disk spool; points without text have no field."""
    texts = ['ack by "op1"', "back\\slash, a=b", "two\nlines", "Dy³⁺ ü", ""]
    direct = [Point("audit", "Operator.Shelve", "cell1", float(i), 1.7e9 + i, text=t) for i, t in enumerate(texts)]
    spooled = [Point("audit", "Operator.SetMode", "", float(i), 1.7e9 + 10 + i, text=t) for i, t in enumerate(texts)]
    db.write_batch(direct)
    spool = Spool(tmp_path / "spool.sqlite")
    spool.append(spooled)
    rec = Recorder(Influx1Sink(url=db.settings.url, database=db.settings.database), spool).start()
    assert rec.drain(30)
    rec.close()
    assert rec.stats.replayed == len(spooled)
    res = db.query('SELECT "tag", "value", "text" FROM "audit"', epoch="ms")[0]["series"][0]
    back = [(tag, ts / 1000, v, text) for ts, tag, v, text in res["values"]]
    want = [(p.tag, p.time_s, p.value, p.text or None) for p in direct + spooled]
    assert sorted(back, key=lambda r: r[1]) == sorted(want, key=lambda r: r[1])


# -- outages -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def own_influx():
    """A private instance this module may stop and restart (data kept across restarts)."""
    ci_server.stop(OUTAGE_PORT)
    url = ci_server.start(OUTAGE_PORT)
    yield url
    ci_server.stop(OUTAGE_PORT)


@pytest.mark.slow
def test_influxdb_stopped_30s_mid_run_loses_and_duplicates_nothing(own_influx, tmp_path):
    name = f"outage_{uuid.uuid4().hex[:8]}"
    reader = Influx1Sink(url=own_influx, database=name)
    reader.create_database()
    steps = list(simulated_run(load_config(), 3 * 3600, epoch_s=1.7e9))
    spool = Spool(tmp_path / "spool.sqlite")
    rec = Recorder(Influx1Sink(url=own_influx, database=name, timeout_s=2), spool,
                   batch_size=500, flush_interval_s=0.2, retry_max_s=2.0).start()
    third = len(steps) // 3
    t0 = time.monotonic()

    def feed(chunk, seconds):
        for i, points in enumerate(chunk):
            rec.record_many(points)
            time.sleep(max(0.0, seconds / len(chunk) - 0.0))

    feed(steps[:third], 3)
    rec.flush(10)
    ci_server.stop(OUTAGE_PORT, keep_data=True)
    down_at = time.monotonic()
    feed(steps[third:2 * third], 30)  # 30 s of recording while the database is down
    rec.flush(10)
    assert rec.stats.spooled > 0 and spool.pending_points > 0
    ci_server.start(OUTAGE_PORT)
    outage_s = time.monotonic() - down_at
    feed(steps[2 * third:], 3)
    assert rec.drain(60), f"spool not drained: {spool.pending_points} points left"
    rec.close()
    written = [key(p) for points in steps for p in points]
    assert len(set(written)) == len(written)
    back = read_back(reader)
    assert outage_s >= 30
    assert len(back) == len(written) and sorted(back) == sorted(written)
    # exact replay: every point went to the database exactly once
    assert rec.stats.written == rec.stats.recorded == len(written)
    assert rec.stats.replayed == rec.stats.spooled > 0
    assert time.monotonic() - t0 < 80


RECORD_THEN_DIE = """
import os, signal, sys
from pilot.historian.feed import simulated_run
from pilot.historian.influx1 import Influx1Sink
from pilot.historian.recorder import Recorder
from pilot.historian.spool import Spool
from pilot_config import load_config
import json
url, db, spool_path, keys_path = sys.argv[1:5]
rec = Recorder(Influx1Sink(url=url, database=db, timeout_s=1), Spool(spool_path), batch_size=1000).start()
keys = []
for points in simulated_run(load_config(), 2 * 3600, epoch_s=1.8e9):
    rec.record_many(points)
    keys += [(p.measurement, p.tag, p.unit, p.quality, round(p.time_s * 1000), p.value) for p in points]
rec.flush(30)
with open(keys_path, "w") as f:
    json.dump(keys, f)
print(len(keys), rec.stats.spooled, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # crash: no close(), no goodbye
"""

REPLAY = """
import sys
from pilot.historian.influx1 import Influx1Sink
from pilot.historian.recorder import Recorder
from pilot.historian.spool import Spool
url, db, spool_path = sys.argv[1:4]
spool = Spool(spool_path)
waiting = spool.pending_points
rec = Recorder(Influx1Sink(url=url, database=db), spool).start()
ok = rec.drain(60)
print(waiting, rec.stats.replayed, int(ok), flush=True)
rec.close()
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_process_restart_with_spooled_points_loses_nothing(own_influx, tmp_path):
    name = f"restart_{uuid.uuid4().hex[:8]}"
    reader = Influx1Sink(url=own_influx, database=name)
    reader.create_database()
    spool_path = str(tmp_path / "spool.sqlite")
    ci_server.stop(OUTAGE_PORT, keep_data=True)
    keys_path = tmp_path / "written.json"
    first = _python(RECORD_THEN_DIE, own_influx, name, spool_path, str(keys_path))
    assert first.returncode == -9, first.stderr
    n, spooled = map(int, first.stdout.split())
    assert n == spooled > 5000
    ci_server.start(OUTAGE_PORT)
    second = _python(REPLAY, own_influx, name, spool_path)
    assert second.returncode == 0, second.stderr
    waiting, replayed, ok = map(int, second.stdout.split())
    assert (waiting, replayed, ok) == (n, n, 1)
    back = read_back(reader)
    expected = [tuple(k) for k in json.loads(keys_path.read_text())]  # what the first process recorded
    assert len(back) == len(expected) and sorted(back) == sorted(expected)
    assert Spool(spool_path).pending_points == 0
