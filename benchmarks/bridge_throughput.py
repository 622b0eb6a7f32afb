"""Bridge throughput: a node-opcua server publishes --tags Float tags at --hz (2,000 x 5 Hz =
10,000 changes/s); our bridge subscribes to all of them, then node-opcua's own client does the same
as the reference. Prints sustained changes/s received (and the share of those published), latency
p50/p95 from SourceTimestamp to handoff (the bridge's listener call / node's 'changed' event), and
each client's CPU share (cores). Goal: no loss, p95 < 250 ms, under one core.

Usage: python benchmarks/bridge_throughput.py [--tags 2000] [--hz 5] [--seconds 15]
(the bridge's client security from the environment, PILOT_OPCUA_SECURITY_POLICY and the rest)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opcua_server.bridge import OpcUaBridge
from opcua_server.client_security import ClientSecurity
from opcua_server.node_interop import NodeScript, free_port
from pilot_config.tags import Tag

NS = "urn:pilot-line:throughput"


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


async def run_bridge(url: str, n: int, sampling_ms: float, warmup: float, seconds: float) -> dict:
    tags = [Tag(name=f"T{i}", signal="bench.t", kind="sensor", unit="1", low=0, high=1000,
                opcua={"node_id": f"T{i}", "sampling_interval_ms": sampling_ms, "queue_size": 2}) for i in range(n)]
    state = {"on": False, "count": 0, "lat": []}

    def listener(name, sample):
        if state["on"]:
            state["count"] += 1
            state["lat"].append(time.time() - sample.source_time)

    bridge = OpcUaBridge(url, tags, NS, listener=listener, security=ClientSecurity.from_env())
    await bridge.start()
    await asyncio.sleep(warmup)
    c0, t0 = time.process_time(), time.monotonic()
    state["on"] = True
    await asyncio.sleep(seconds)
    state["on"] = False
    c1, t1 = time.process_time(), time.monotonic()
    await bridge.close()
    lat = sorted(state["lat"])
    return {"changes_per_s": state["count"] / (t1 - t0), "p50_ms": 1e3 * percentile(lat, 0.5),
            "p95_ms": 1e3 * percentile(lat, 0.95), "cpu": (c1 - c0) / (t1 - t0), "monitored": bridge.monitored}


def run_node_client(url: str, n: int, sampling_ms: float, warmup: float, seconds: float) -> dict:
    out = NodeScript("sub_client.js", url, NS, n, sampling_ms, warmup, seconds).run(timeout_s=warmup + seconds + 60)
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tags", type=int, default=2000)
    p.add_argument("--hz", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=4.0)
    a = p.parse_args()
    sampling_ms = 1000.0 / a.hz / 2  # sample twice per change so none is aliased away
    published = a.tags * a.hz
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}"
    with NodeScript("tag_server.js", port, NS, a.tags, 0, a.hz):
        ours = asyncio.run(run_bridge(url, a.tags, sampling_ms, a.warmup, a.seconds))
        ref = run_node_client(url, a.tags, sampling_ms, a.warmup, a.seconds)
    print(f"node-opcua server: {a.tags} tags x {a.hz:g} Hz = {published:,.0f} changes/s published; "
          f"{a.seconds:g} s measured after {a.warmup:g} s warm-up")
    print(f"{'client':<22} {'changes/s':>10} {'received':>9} {'p50 ms':>8} {'p95 ms':>8} {'CPU (cores)':>12}")
    for name, r in (("pilot-line bridge", ours), ("node-opcua client", ref)):
        print(f"{name:<22} {r['changes_per_s']:>10,.0f} {r['changes_per_s'] / published:>8.1%} "
              f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['cpu']:>12.2f}")
    ok = ours["changes_per_s"] >= 0.99 * published and ours["p95_ms"] < 250 and ours["cpu"] < 1.0
    print(f"goal (no loss, p95 < 250 ms, < 1 core): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
