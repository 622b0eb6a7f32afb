"""Which historian to use, from the environment only (never from the plant YAML).

| variable | meaning | default |
|---|---|---|
| ``PILOT_INFLUX_URL`` | InfluxDB base URL; unset: the embedded SQLite store | unset |
| ``PILOT_INFLUX_VERSION`` | ``1`` (v1 ``/write``) or ``2`` (``influxdb-client``, 2.x/3.x) | ``2`` if a token is set, else ``1`` |
| ``PILOT_INFLUX_TOKEN`` / ``_ORG`` / ``_BUCKET`` | 2.x / 3.x credentials and target | -, ``pilot``, ``pilot`` |
| ``PILOT_INFLUX_DATABASE`` / ``_RP`` / ``_USER`` / ``_PASSWORD`` | 1.x target and optional credentials | ``pilot``, server default, -, - |
| ``PILOT_INFLUX_PRECISION`` | timestamp precision: s, ms, us, ns | ``ms`` |
| ``PILOT_HISTORIAN_SPOOL`` | spool file | ``~/.local/state/pilot/spool.sqlite`` |
| ``PILOT_HISTORIAN_SPOOL_MAX_MB`` | spool bound; oldest batches dropped beyond it | ``256`` |
| ``PILOT_HISTORIAN_BATCH`` / ``_FLUSH_S`` | batch size, flush interval | ``5000``, ``1.0`` |
| ``PILOT_GRAFANA_URL`` / ``PILOT_GRAFANA_TOKEN`` | alarm annotations (both needed) | unset |

A token or password may instead come from a file: ``PILOT_INFLUX_TOKEN_FILE``,
``PILOT_INFLUX_PASSWORD_FILE``, ``PILOT_GRAFANA_TOKEN_FILE`` (the file's content, trailing newline
dropped). Secrets never appear in a message or a ``repr``; URLs are shown redacted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..secrets import redacted_repr
from .base import Sink
from .influx1 import Influx1Settings, Influx1Sink
from .influx2 import Influx2Settings, Influx2Sink
from .lineproto import PRECISIONS
from .recorder import Recorder
from .runs import new_run_id
from .spool import Spool


@dataclass(frozen=True)
class HistorianSettings:
    influx_url: str = ""
    version: int = 1
    token: str = field(default="", repr=False)
    org: str = "pilot"
    bucket: str = "pilot"
    database: str = "pilot"
    retention_policy: str = ""
    user: str = ""
    password: str = field(default="", repr=False)
    precision: str = "ms"
    spool_path: Path = Path("~/.local/state/pilot/spool.sqlite")
    spool_max_mb: float = 256.0
    batch_size: int = 5000
    flush_interval_s: float = 1.0

    def __repr__(self) -> str:
        return redacted_repr(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HistorianSettings:
        env = os.environ if environ is None else environ
        g = env.get
        token = secret_from_env(env, "PILOT_INFLUX_TOKEN")
        version = int(g("PILOT_INFLUX_VERSION", "2" if token else "1"))
        s = cls(influx_url=g("PILOT_INFLUX_URL", ""), version=version, token=token,
                org=g("PILOT_INFLUX_ORG", "pilot"), bucket=g("PILOT_INFLUX_BUCKET", "pilot"),
                database=g("PILOT_INFLUX_DATABASE", "pilot"), retention_policy=g("PILOT_INFLUX_RP", ""),
                user=g("PILOT_INFLUX_USER", ""), password=secret_from_env(env, "PILOT_INFLUX_PASSWORD"),
                precision=g("PILOT_INFLUX_PRECISION", "ms"),
                spool_path=Path(g("PILOT_HISTORIAN_SPOOL", str(cls.spool_path))).expanduser(),
                spool_max_mb=float(g("PILOT_HISTORIAN_SPOOL_MAX_MB", "256")),
                batch_size=int(g("PILOT_HISTORIAN_BATCH", "5000")),
                flush_interval_s=float(g("PILOT_HISTORIAN_FLUSH_S", "1.0")))
        s.check()
        return s

    def check(self) -> None:
        problems = []
        if self.version not in (1, 2):
            problems.append(f"PILOT_INFLUX_VERSION must be 1 or 2, got {self.version}")
        if self.precision not in PRECISIONS:
            problems.append(f"PILOT_INFLUX_PRECISION must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.influx_url and self.version == 2 and not self.token:
            problems.append("PILOT_INFLUX_VERSION=2 needs PILOT_INFLUX_TOKEN")
        if self.spool_max_mb <= 0 or self.batch_size < 1 or self.flush_interval_s <= 0:
            problems.append("PILOT_HISTORIAN_SPOOL_MAX_MB, _BATCH and _FLUSH_S must be > 0")
        if problems:
            raise ValueError("historian settings: " + "; ".join(problems))

    @property
    def uses_influx(self) -> bool:
        return bool(self.influx_url)


def secret_from_env(env: Mapping[str, str], name: str) -> str:
    """``env[name]``, else the content of the file ``env[name + "_FILE"]``, else ``""``."""
    if env.get(name):
        return env[name]
    path = env.get(name + "_FILE", "")
    if not path:
        return ""
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"historian settings: {name}_FILE names {path}, which cannot be read "
                         f"({exc.strerror or exc})") from None


def make_sink(s: HistorianSettings, run_dir: Path | None = None) -> Sink:
    """The configured InfluxDB sink, or the embedded SQLite store in ``run_dir``."""
    if not s.influx_url:
        from .sqlite import SqliteSink, history_path

        if run_dir is None:
            raise ValueError("no PILOT_INFLUX_URL and no run folder for the embedded store")
        return SqliteSink(history_path(run_dir))
    if s.version == 2:
        return Influx2Sink(Influx2Settings(s.influx_url, s.org, s.bucket, s.token, s.precision))
    return Influx1Sink(Influx1Settings(s.influx_url, s.database, s.retention_policy, s.user, s.password,
                                       s.precision))


def make_recorder(s: HistorianSettings, run_dir: Path | None = None, run_id: str | None = None) -> Recorder:
    """Recorder with the disk spool (InfluxDB) or the memory spool (embedded store); not started.
    ``run_id``: the run tag of its derived points (None: a fresh one, ``new_run_id()``)."""
    sink = make_sink(s, run_dir)
    spool = Spool(s.spool_path, int(s.spool_max_mb * 2**20)) if s.influx_url else None
    return Recorder(sink, spool, batch_size=s.batch_size, flush_interval_s=s.flush_interval_s,
                    run_id=new_run_id() if run_id is None else run_id)
