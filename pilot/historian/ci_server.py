"""The throw-away InfluxDB 1.x of the tests and the benchmark (``.ci/influxdb.sh``), from Python.

``ensure_influxdb()`` starts it if it is not answering (installing Debian's package the first
time) and says whether it did, so a caller stops only what it started. Failures raise: a test
that needs the real database fails when it cannot start, it is never skipped.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "influxdb.sh"
DEFAULT_PORT = 18086


def _run(args: list[str], port: int, timeout_s: float = 600.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PILOT_CI_INFLUX_PORT": str(port)}
    proc = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, check=False,
                          timeout=timeout_s)
    return proc


def status(port: int = DEFAULT_PORT) -> str | None:
    proc = _run(["status"], port, 30)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def start(port: int = DEFAULT_PORT) -> str:
    proc = _run(["start"], port)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"InfluxDB did not start on port {port}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def stop(port: int = DEFAULT_PORT, keep_data: bool = False) -> None:
    proc = _run(["stop", "--keep-data"] if keep_data else ["stop"], port, 60)
    if proc.returncode != 0:
        raise RuntimeError(f"InfluxDB did not stop on port {port}: {proc.stderr.strip()}")


def ensure_influxdb(port: int = DEFAULT_PORT) -> tuple[str, bool]:
    """(URL, started_here)."""
    url = status(port)
    if url:
        return url, False
    return start(port), True
