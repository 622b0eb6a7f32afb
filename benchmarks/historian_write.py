"""Historian write throughput into the real InfluxDB 1.x: the recorder vs a plain HTTP POST.

    python benchmarks/historian_write.py [--points 500000] [--batch 5000] [--repeat 3] [--url URL]

Both sides start from data already in memory and write the same points into a fresh database:

- plain POST: pre-built line-protocol bodies (``batch`` lines each), POSTed one after the other
  on one keep-alive ``http.client`` connection: the floor of what any Python writer can do;
- recorder: ``Point`` objects handed to ``Recorder.record_many`` in chunks of 1,000 (as a control
  loop would), encoded and written by its worker (``Influx1Sink``), timed until ``flush()`` returns.

Also prints the encoding cost per point: our cached-key encoder vs building one
``influxdb_client.Point`` per value and calling ``to_line_protocol()``.
Without ``--url`` it starts the CI instance (.ci/influxdb.sh) and stops it afterwards.
Goal: recorder >= 80 % of the plain POST and >= 100,000 points/s.
It claims 2 cores (the writer and InfluxDB side by side) and refuses on fewer unless
--allow-fewer-cores; the machine's load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import _machine  # one BLAS thread: before numpy loads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pilot.historian import ci_server
from pilot.historian.base import Point
from pilot.historian.influx1 import Influx1Sink
from pilot.historian.lineproto import Encoder
from pilot.historian.recorder import Recorder


def make_points(n: int, n_tags: int = 200) -> list[Point]:
    """n points: n_tags tags of 5 plant units, one sample per tag per second, varied values."""
    t0 = time.time() - n / n_tags - 60
    tags = [(f"UNIT{k % 5}.TAG{k:03d}.PV", f"unit{k % 5}") for k in range(n_tags)]
    return [Point("process", tags[i % n_tags][0], tags[i % n_tags][1], 100.0 + ((i * 7919) % 10007) / 37.0,
                  t0 + i // n_tags, "good") for i in range(n)]


def fresh_db(url: str) -> Influx1Sink:
    sink = Influx1Sink(url=url, database=f"bench_{uuid.uuid4().hex[:8]}")
    sink.create_database()
    return sink


def count(sink: Influx1Sink) -> int:
    series = sink.query('SELECT count("value") FROM "process"')[0].get("series", [])
    return int(series[0]["values"][0][1]) if series else 0


def plain_post(url: str, points: list[Point], batch: int) -> float:
    sink = fresh_db(url)
    enc = Encoder("ms")
    bodies = [enc.encode(points[i:i + batch]) for i in range(0, len(points), batch)]
    t0 = time.perf_counter()
    for body in bodies:
        sink.write_body(body)
    dt = time.perf_counter() - t0
    assert count(sink) == len(points)
    sink.query(f'DROP DATABASE "{sink.settings.database}"', method="POST")
    return len(points) / dt


def recorder(url: str, points: list[Point], batch: int, chunk: int = 1000) -> float:
    probe = fresh_db(url)
    rec = Recorder(Influx1Sink(url=url, database=probe.settings.database), batch_size=batch,
                   max_queued_points=max(len(points), batch)).start()
    t0 = time.perf_counter()
    for i in range(0, len(points), chunk):
        rec.record_many(points[i:i + chunk])
    rec.flush()
    dt = time.perf_counter() - t0
    rec.close()
    assert rec.stats.written == len(points) and rec.stats.spooled == 0
    assert count(probe) == len(points)
    probe.query(f'DROP DATABASE "{probe.settings.database}"', method="POST")
    return len(points) / dt


def encode_cost(points: list[Point]) -> tuple[float, float]:
    """µs per point: cached-key encoder, and influxdb_client.Point + to_line_protocol."""
    from influxdb_client import Point as ClientPoint
    from influxdb_client import WritePrecision

    sample = points[:100_000]
    t0 = time.perf_counter()
    Encoder("ms").encode(sample)
    ours = (time.perf_counter() - t0) / len(sample) * 1e6
    t0 = time.perf_counter()
    body = "\n".join(
        ClientPoint(p.measurement).tag("quality", p.quality).tag("tag", p.tag).tag("unit", p.unit)
        .field("value", p.value).time(round(p.time_s * 1000), WritePrecision.MS).to_line_protocol()
        for p in sample).encode()
    theirs = (time.perf_counter() - t0) / len(sample) * 1e6
    assert len(body) > 0
    return ours, theirs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=500_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--url", default="", help="InfluxDB 1.x URL (default: start the CI instance)")
    ap.add_argument("--encode-only", action="store_true")
    _machine.add_arguments(ap)
    args = ap.parse_args(argv)
    _machine.claim(2, allow_fewer=args.allow_fewer_cores)
    print(_machine.load_line(2))
    points = make_points(args.points)
    ours, theirs = encode_cost(points)
    print(f"encoding: cached-key f-string {ours:.2f} µs/point, influxdb_client.Point {theirs:.2f} µs/point "
          f"({theirs / ours:.1f}x slower)")
    if args.encode_only:
        return 0
    started = False
    url = args.url
    if not url:
        url, started = ci_server.ensure_influxdb()
    try:
        raw, rec = [], []
        for _ in range(args.repeat):  # interleaved, so load changes hit both alike
            raw.append(plain_post(url, points, args.batch))
            rec.append(recorder(url, points, args.batch))
        r, c = statistics.median(raw), statistics.median(rec)
        print(f"{args.points} points, batch {args.batch}, median of {args.repeat} (InfluxDB at {url})")
        print(f"plain POST of pre-built line protocol: {r:12,.0f} points/s   runs: "
              + ", ".join(f"{x:,.0f}" for x in raw))
        print(f"recorder (Point -> InfluxDB):          {c:12,.0f} points/s   runs: "
              + ", ".join(f"{x:,.0f}" for x in rec))
        ratio = c / r
        ok = ratio >= 0.8 and c >= 100_000
        print(f"ratio recorder / plain POST: {ratio:.1%}   goal >= 80 % and >= 100,000 points/s: "
              f"{'met' if ok else 'NOT met'}")
    finally:
        if started:
            ci_server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
