"""CPU share of the simulated PLC server (its own process), with a bridge subscribed to every tag.

Cases:
- ``default``: the shipped line (its tag count and sampling intervals) driven by the real TwinPlant
  at --speed (60: one plant step per wall second, so every measured tag changes every second);
- ``synthetic``: N Float tags all changing at H Hz, stock asyncua value path vs our fast path
  (no per-monitored-item deep copy), to show why the fast path exists.

Usage: python benchmarks/plc_server_load.py [--seconds 10] [--speed 60] [--tags 1000] [--hz 10]

It claims 2 cores (the server and the bridge side by side) and refuses on fewer unless
--allow-fewer-cores; the machine's load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import _machine  # one BLAS thread: before numpy loads

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opcua_server.bridge import OpcUaBridge
from opcua_server.client_security import ClientSecurity
from opcua_server.node_interop import free_port, wait_port
from pilot_config.tags import Tag
from twin.signals import Quality, Sample, WriteResult

NS = "urn:pilot-line:bench"


def synthetic_tags(n: int, hz: float) -> list[Tag]:
    return [Tag(name=f"S{i}", signal="bench.s", kind="sensor", unit="1", low=0, high=1e6,
                opcua={"sampling_interval_ms": 1000.0 / hz}) for i in range(n)]


class SyntheticPlant:
    """Every tag changes at every step (dt = 1/hz)."""

    def __init__(self, n: int, hz: float):
        self.dt, self.t, self.n = 1.0 / hz, 0.0, n

    def advance(self, dt_s: float) -> None:
        self.t += dt_s

    def snapshot(self) -> dict[str, Sample]:
        k = round(self.t / self.dt)
        return {f"S{i}": Sample(float((k * 7 + i) % 100000), self.t, Quality.GOOD) for i in range(self.n)}

    def write(self, values) -> WriteResult:
        return WriteResult((), {n: "read-only" for n in values})

    def unit_of(self, name: str) -> str:
        return "bench"


async def serve(args) -> None:
    from opcua_server.server import PlcServer

    url = f"opc.tcp://127.0.0.1:{args.port}"
    if args.serve == "default":
        from opcua_server.plc_sim import run_plc_sim
        from pilot_config import load_config

        await run_plc_sim(load_config(), url, args.speed)
        return
    plant = SyntheticPlant(args.tags, args.hz)
    server = PlcServer(synthetic_tags(args.tags, args.hz), NS, plant, url, epoch_s=time.time(),
                       fast_path=args.serve == "fast")
    await server.start()
    await server.run(1.0, max_chunk_steps=1)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(case: str, tags: list[Tag], ns: str, argv: list[str], seconds: float) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", case, "--port", str(port), *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 60)
        received = [0]
        bridge = OpcUaBridge(f"opc.tcp://127.0.0.1:{port}", tags, ns, listener=lambda n, s: None,
                             security=ClientSecurity.from_env())  # PILOT_OPCUA_* as every client
        await bridge.start()
        await asyncio.sleep(3.0)  # warm-up
        c0, n0, t0 = cpu_seconds(proc.pid), bridge.stats.changes, time.monotonic()
        await asyncio.sleep(seconds)
        c1, n1, t1 = cpu_seconds(proc.pid), bridge.stats.changes, time.monotonic()
        await bridge.close()
        received[0] = n1 - n0
        return {"case": case, "tags": len(tags), "server_cpu": (c1 - c0) / (t1 - t0),
                "changes_per_s": (n1 - n0) / (t1 - t0)}
    finally:
        proc.terminate()
        proc.wait(10)


async def main(args) -> None:
    from pilot_config import load_config

    config = load_config()
    rows = [await measure("default", list(config.tags), config.opcua.namespace_uri,
                          ["--speed", str(args.speed)], args.seconds)]
    rows[0]["case"] = f"default line, TwinPlant x{args.speed:g}"
    for case in ("stock", "fast"):
        r = await measure(case, synthetic_tags(args.tags, args.hz), NS,
                          ["--tags", str(args.tags), "--hz", str(args.hz)], args.seconds)
        r["case"] = f"synthetic {args.tags} tags @ {args.hz:g} Hz, {case} asyncua path"
        rows.append(r)
    print(f"{'case':<52} {'tags':>6} {'changes/s':>10} {'server CPU (cores)':>19}")
    for r in rows:
        print(f"{r['case']:<52} {r['tags']:>6} {r['changes_per_s']:>10.0f} {r['server_cpu']:>19.3f}")
    goal = rows[0]["server_cpu"] < 0.5
    print(f"default line under half a core: {'yes' if goal else 'NO'}")
    print(_machine.load_line(2))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", choices=["default", "stock", "fast"])
    p.add_argument("--port", type=int)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--speed", type=float, default=60.0)
    p.add_argument("--tags", type=int, default=1000)
    p.add_argument("--hz", type=float, default=10.0)
    _machine.add_arguments(p)
    a = p.parse_args()
    if a.serve:
        import logging

        logging.basicConfig(level=logging.WARNING)
        asyncio.run(serve(a))
    else:
        _machine.claim(2, allow_fewer=a.allow_fewer_cores)
        print(_machine.load_line(2))
        asyncio.run(main(a))
