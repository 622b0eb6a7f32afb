"""Memory of the long-running processes: does their resident set level off?

Starts ``pilot plc-sim --speed 60`` (one server, every tag, on a free loopback port) and
``pilot run --mode auto`` against it, samples the resident set (RSS) of both every 10 s for
``--minutes`` wall-minutes (default 10: 10 plant-hours at speed 60) and prints, per process, the
growth over the first half beside the growth over the last half (goal: last 5 minutes < 5 MiB).
A process that leaks grows about as much in the second half as in the first; one that levels off
grows in the first (imports, caches, the historian's first pages) and then stays flat.

    .venv/bin/python benchmarks/memory_soak.py [--minutes 10] [--speed 60] [--step sync|serve|SECONDS]
        [--no-run] [--train SCENARIO] [--allow-fewer-cores]

RSS comes from psutil when it is installed, else from ``/proc/PID/status`` (VmRSS). It claims two
cores (the simulated PLC and the control loop are two processes), prints the machine's load
beside its figures, and fails (exit 1) when a process dies or the goal is missed. ``--train
SCENARIO`` soaks ``pilot train serve`` (twin, PLC server, control loop and operator server in one
process) the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _machine  # noqa: I001  (one BLAS thread: before numpy loads)

from opcua_server.node_interop import free_port, wait_port

GOAL_MIB = 5.0
SAMPLE_S = 10.0
PASSWORD = "soak-operator-secret"
MIB = 2.0 ** 20


def rss_bytes(pid: int) -> int:
    """Resident set of ``pid`` in bytes (psutil, else /proc/PID/status)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return psutil.Process(pid).memory_info().rss
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS for process {pid}")


def halves(samples: list[tuple[float, int]]) -> tuple[float, float]:
    """(growth over the first half, growth over the last half) in MiB of (wall s, RSS) samples."""
    if len(samples) < 3:
        raise ValueError("need at least three samples")
    mid = samples[len(samples) // 2][1]
    return (mid - samples[0][1]) / MIB, (samples[-1][1] - mid) / MIB


def start(tmp: Path, args) -> dict[str, subprocess.Popen]:
    """``pilot plc-sim`` on a free port and, unless ``--no-run``, ``pilot run --mode auto`` against
    it, in ``tmp`` (a PKI folder they create stays there); their stderr goes to ``tmp/<name>.log``."""
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}"
    env = {**os.environ, "PILOT_OPCUA_USERS": f"ctl:operator:{PASSWORD}", "COLUMNS": "200"}
    pilot = [sys.executable, "-m", "pilot"]
    commands = {"plc-sim": [*pilot, "plc-sim", "--endpoint", url, "--speed", str(args.speed), "--step", args.step]}
    if args.train:  # the served session: twin, PLC server, control loop and operator server in one
        commands = {"train serve": [
            *pilot, "train", "serve", args.train, "--endpoint", url, "--speed", f"{args.speed:g}", "--step",
            args.step, "--operator-endpoint", f"opc.tcp://127.0.0.1:{free_port()}", "--out", str(tmp / "train"),
            "--snapshot-dir", str(tmp / "snapshots")]}
    elif args.run:
        (tmp / "password").write_text(PASSWORD)
        commands["pilot run"] = [
            *pilot, "run", "--plc", url, "--mode", "auto", "--out", str(tmp / "run"), "--operator-endpoint", "",
            "--security-policy", "None", "--security-mode", "None", "--user", "ctl",
            "--password-file", str(tmp / "password"), "--allow-plaintext-password"]
    procs = {}
    for name, command in commands.items():
        with open(log_path(tmp, name), "wb") as log:
            procs[name] = subprocess.Popen(command, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=log)
        if name != "pilot run":
            wait_port(port, 120)
    return procs


def log_path(tmp: Path, name: str) -> Path:
    return tmp / f"{name.replace(' ', '-')}.log"


def soak(procs: dict[str, subprocess.Popen], minutes: float, warmup_s: float,
         tmp: Path) -> dict[str, list[tuple[float, int]]]:
    """RSS of every process every SAMPLE_S for ``minutes`` after ``warmup_s``; raises SystemExit
    (with the end of its log) if one dies."""
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in procs}
    t0 = time.monotonic() + warmup_s
    n = int(round(minutes * 60.0 / SAMPLE_S))
    for k in range(n + 1):
        time.sleep(max(0.0, t0 + k * SAMPLE_S - time.monotonic()))
        row = [f"{time.monotonic() - t0:6.0f} s"]
        for name, proc in procs.items():
            if proc.poll() is not None:
                tail = log_path(tmp, name).read_text(errors="replace")[-2000:]
                raise SystemExit(f"{name} exited ({proc.returncode}) after {time.monotonic() - t0:.0f} s:\n{tail}")
            rss = rss_bytes(proc.pid)
            samples[name].append((time.monotonic() - t0, rss))
            row.append(f"{name} {rss / MIB:7.1f} MiB")
        print("  ".join(row), flush=True)
    return samples


def stop(procs: dict[str, subprocess.Popen], tmp: Path) -> dict[str, str]:
    """SIGINT the simulated PLC, SIGTERM the run (both stop cleanly); what each says at the end:
    the plant time the PLC reached, the ticks the run made."""
    for name, proc in procs.items():
        proc.send_signal(signal.SIGINT if name == "plc-sim" else signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    said = {}
    if "plc-sim" in procs:
        m = re.findall(r"stopped at plant time (\d+) s", log_path(tmp, "plc-sim").read_text(errors="replace"))
        said["plc-sim"] = f"plant time reached {int(m[-1]) / 3600:.1f} h" if m else "plant time not logged"
    summary = tmp / "run" / "summary.json"
    if "pilot run" in procs and summary.is_file():
        control = json.loads(summary.read_text()).get("control", {})
        said["pilot run"] = f"{control.get('ticks', '?')} control ticks"
    return said


def report(samples: dict[str, list[tuple[float, int]]], minutes: float, speed: float, said: dict[str, str]) -> bool:
    print(f"\nmemory soak: {minutes:g} wall-minutes at speed {speed:g} ({minutes * speed / 60:.1f} plant-hours), "
          f"RSS every {SAMPLE_S:.0f} s after the warm-up; " + "; ".join(f"{k}: {v}" for k, v in said.items()))
    print(_machine.load_line(len(samples)))
    print(f"{'process':10s} {'start MiB':>10s} {'end MiB':>9s} {'first half':>11s} {'last half':>10s} "
          f"{'last half per plant-h':>22s}  goal: last half < {GOAL_MIB:g} MiB")
    ok = True
    for name, s in samples.items():
        first, last = halves(s)
        plant_h = (s[-1][0] - s[len(s) // 2][0]) * speed / 3600.0
        ok &= last < GOAL_MIB
        print(f"{name:10s} {s[0][1] / MIB:10.1f} {s[-1][1] / MIB:9.1f} {first:+10.1f} {last:+10.1f} "
              f"{last / plant_h if plant_h else 0:+18.2f} MiB  {'ok' if last < GOAL_MIB else 'MISSED'}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-minutes to soak (default 10)")
    ap.add_argument("--speed", type=float, default=60.0, help="plc-sim speed (default 60)")
    ap.add_argument("--step", default="sync", help="plc-sim --step: sync (default), serve or plant seconds")
    ap.add_argument("--no-run", dest="run", action="store_false", help="the simulated PLC alone, no pilot run")
    ap.add_argument("--train", metavar="SCENARIO", help="soak `pilot train serve SCENARIO` instead (one process; "
                    "give --step serve for the served 1 s step and a --speed the machine keeps up with)")
    ap.add_argument("--warmup", type=float, default=30.0, help="wall seconds before the first sample (default 30)")
    _machine.add_arguments(ap)
    args = ap.parse_args()
    if args.minutes * 60.0 < 3 * SAMPLE_S:
        raise SystemExit(f"--minutes: at least {3 * SAMPLE_S / 60:g} (three samples)")
    _machine.claim(2 if args.run and not args.train else 1, allow_fewer=args.allow_fewer_cores)
    with tempfile.TemporaryDirectory(prefix="memory-soak-") as tmp:
        procs = start(Path(tmp), args)
        try:
            samples = soak(procs, args.minutes, args.warmup, Path(tmp))
        finally:
            said = stop(procs, Path(tmp))
    raise SystemExit(0 if report(samples, args.minutes, args.speed, said) else 1)


if __name__ == "__main__":
    main()
