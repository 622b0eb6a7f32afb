"""node-opcua, an OPC UA stack nobody here wrote, for interoperability tests and benchmarks.

``ensure_node_opcua()`` installs the pinned ``tests/node/package.json`` with the machine's npm into
``tests/node/.node`` (git-ignored) once: a file lock serialises concurrent callers and a marker
skips the install when the pinned version is already there. ``NodeScript`` runs one of the small
scripts in ``tests/node`` and waits for its ``READY`` line.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parent.parent / "tests" / "node"
INSTALL_DIR = NODE_DIR / ".node"


class NodeUnavailable(RuntimeError):
    pass


def node_available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


def ensure_node_opcua(timeout_s: float = 600) -> Path:
    """Install node-opcua (pinned) once; returns the node_modules folder. Raises on failure."""
    if not node_available():
        raise NodeUnavailable("node and npm are needed for the node-opcua interoperability checks")
    pin = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["node-opcua"]
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    marker = INSTALL_DIR / "node_modules" / "node-opcua" / "package.json"
    with open(INSTALL_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and json.loads(marker.read_text()).get("version") == pin:
            return INSTALL_DIR / "node_modules"
        shutil.copy(NODE_DIR / "package.json", INSTALL_DIR / "package.json")
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=INSTALL_DIR, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not marker.is_file():
            raise RuntimeError(f"npm install of node-opcua@{pin} failed (exit {proc.returncode}):\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return INSTALL_DIR / "node_modules"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


def node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["NODE_PATH"] = str(ensure_node_opcua())
    env.setdefault("NODE_OPTIONS", "--no-warnings")
    return env


class NodeScript:
    """A node script from tests/node run as a child process (stdout captured)."""

    def __init__(self, script: str, *args: str, env: dict[str, str] | None = None):
        self.argv = ["node", str(NODE_DIR / script), *map(str, args)]
        self.env = {**node_env(), **(env or {})}
        self.proc: subprocess.Popen | None = None
        self._seen = ""

    def run(self, timeout_s: float = 60) -> str:
        """Run to completion; returns stdout, raises with stderr on a non-zero exit."""
        proc = subprocess.run(self.argv, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(self.argv[1:3])} failed ({proc.returncode}): {proc.stderr[-3000:]}")
        return proc.stdout

    def start(self, timeout_s: float = 30) -> NodeScript:
        """Start and wait for the READY line."""
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            self._seen += line
            if line.strip() == "READY":
                threading.Thread(target=self._drain, daemon=True).start()
                return self
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[1]} exited with {self.proc.returncode}: {self._seen[-3000:]}")
        self.stop()
        raise TimeoutError(f"{self.argv[1]} not ready after {timeout_s} s")

    def _drain(self) -> None:
        """Keep reading the child's output so a chatty child never blocks on a full pipe."""
        for stream in (self.proc.stdout,):
            for _ in iter(stream.readline, ""):
                pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> NodeScript:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
