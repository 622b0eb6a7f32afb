"""``pilot historian ...``: Grafana provisioning, historian status, spool replay, demo feed.

Mounted by the main CLI as ``app.add_typer(historian_app, name="historian")``. Everything about
the database comes from the environment (``pilot.historian.settings``). Bad input ends with one
red line and exit code 2; an unreachable database with exit code 1. ``status`` also shows the
recorder's counters of a running ``pilot run``, read from its operator server (variable
``Historian``) with the connection options of ``pilot alarms``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from opcua_server.operator import DEFAULT_OPERATOR_ENDPOINT

from . import cli_security as sec
from .cli_common import fail as _fail
from .secrets import redact_url

err = Console(stderr=True)
out = Console()
historian_app = typer.Typer(help="Historian (InfluxDB / embedded store) and Grafana provisioning.",
                            no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="plant YAML (default: the shipped line)")]


def _config(path: Path | None):
    from pilot_config import ConfigError, load_config

    try:
        return load_config(path)
    except (ConfigError, OSError) as exc:
        _fail(str(exc))


def _settings():
    from pilot.historian.settings import HistorianSettings

    try:
        return HistorianSettings.from_env()
    except ValueError as exc:
        _fail(str(exc))


@historian_app.command("grafana")
def grafana_cmd(out_dir: Annotated[Path, typer.Option("--out", help="folder to write")] = Path("deploy/grafana"),
                config: ConfigOpt = None) -> None:
    """Write the Grafana provisioning (data source, dashboard provider) and the dashboards."""
    from pilot.dashboards import write_provisioning

    for path in write_provisioning(out_dir, _config(config)):
        out.print(str(path), highlight=False)


@historian_app.command("status")
def status_cmd(
    endpoint: Annotated[str, typer.Option(
        "--endpoint", envvar="PILOT_OPERATOR_ENDPOINT",
        help="operator server of a running `pilot run` (its recorder's counters)")] = DEFAULT_OPERATOR_ENDPOINT,
    security_policy: sec.SecurityPolicyOpt = "auto", security_mode: sec.SecurityModeOpt = "auto",
    pki: sec.PkiOpt = sec.DEFAULT_PKI, user: sec.UserOpt = None, password_file: sec.PasswordFileOpt = None,
    allow_plaintext_password: sec.AllowPlaintextOpt = False,
) -> None:
    """Where points go (from the environment), whether the database answers, what the spool holds,
    and the counters of a running `pilot run` (recorded, written, spooled, replayed, dropped, backlog)."""
    s = _settings()
    _print_running(endpoint, (security_policy, security_mode, pki, user, password_file, allow_plaintext_password))
    if not s.uses_influx:
        out.print("historian: embedded SQLite store in each run folder (PILOT_INFLUX_URL not set)")
        return
    target = f"bucket {s.bucket} (org {s.org})" if s.version == 2 else f"database {s.database}"
    out.print(f"historian: InfluxDB {s.version}.x at {redact_url(s.influx_url)}, {target}, "
              f"precision {s.precision}", highlight=False)
    _print_spool(s)
    ok = _ping(s)
    out.print("database: " + ("[green]answering[/]" if ok else "[red]not answering[/]"))
    if not ok:
        raise typer.Exit(1)


def _print_spool(s) -> None:
    from pilot.historian.spool import Spool

    if s.spool_path.exists():
        sp = Spool(s.spool_path, int(s.spool_max_mb * 2**20))
        out.print(f"spool {s.spool_path}: {sp.pending_points} points in {sp.pending_batches} batches "
                  f"({sp.bytes / 2**20:.1f} of {s.spool_max_mb:.0f} MiB) not yet stored, "
                  f"{sp.rejected_points()} refused", highlight=False)
        sp.close()
    else:
        out.print(f"spool {s.spool_path}: empty (no file)", highlight=False)


def counters_line(c: dict) -> str:
    """One line of a recorder's counters (``Recorder.counters()``)."""
    dropped = ", ".join(f"{n} {reason}" for reason, n in c.get("dropped", {}).items()) or "none"
    inherited = f", {c['inherited']} inherited from an earlier run" if c.get("inherited") else ""
    return (f"run {c.get('run') or '-'}: {c['recorded']} recorded, {c['written']} written, "
            f"{c['spooled']} spooled, {c['replayed']} replayed, {c['backlog']} waiting{inherited}; "
            f"dropped: {dropped}")


def _print_running(endpoint: str, options: tuple) -> None:
    """The counters of the `pilot run` serving ``endpoint``; a line saying none answers otherwise."""
    from opcua_server.security import SecurityError

    from .cli_opcua import check_endpoint

    check_endpoint(endpoint)
    security = sec.client_security_or_fail(*options)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # the outcome is the one line below
    try:
        counters = asyncio.run(read_counters(endpoint, security))
    except SecurityError as exc:
        err.print(f"[red]pilot run at {endpoint}:[/] {exc}", highlight=False, soft_wrap=True)
        return
    except Exception as exc:  # noqa: BLE001  (OSError, timeouts, a server without the variable)
        out.print(f"pilot run: none answering at {endpoint} ({exc or type(exc).__name__})", highlight=False,
                  soft_wrap=True)
        return
    if not counters:
        out.print(f"pilot run at {endpoint}: recording nothing (no historian)", highlight=False)
        return
    out.print(f"pilot run at {endpoint}: {counters_line(counters)}", highlight=False, soft_wrap=True)


async def read_counters(endpoint: str, security) -> dict:
    """The ``Historian`` variable of a running `pilot run`'s operator server, parsed."""
    from asyncua import ua

    from opcua_server.client_security import connect_client
    from opcua_server.operator import OPERATOR_NS

    client = await connect_client(endpoint, security, name="pilot-line historian status")
    try:
        idx = await client.get_namespace_index(OPERATOR_NS)
        return json.loads(await client.get_node(ua.NodeId("Operator.Historian", idx)).read_value())
    finally:
        await client.disconnect()


def _ping(s) -> bool:
    from pilot.historian.influx1 import HttpEndpoint

    return HttpEndpoint(s.influx_url, 5.0).ping(accept=(200, 204))  # 3.x answers 200


@historian_app.command("replay")
def replay_cmd(timeout_s: Annotated[float, typer.Option("--timeout", help="give up after (s)")] = 300.0) -> None:
    """Write the spooled points to the database now (the bridge also does it by itself)."""
    from pilot.historian.settings import make_recorder

    s = _settings()
    if not s.uses_influx:
        _fail("PILOT_INFLUX_URL is not set: nothing is spooled for the embedded store")
    rec = make_recorder(s).start()
    waiting = rec.spool.pending_points
    ok = rec.drain(timeout_s)
    left = rec.spool.pending_points
    rec.close()
    c = rec.counters()
    dropped = sum(c["dropped"].values())
    out.print(f"replayed {c['replayed']} of {waiting} points; {left} left" + (f"; {dropped} dropped" if dropped else ""))
    if not ok:
        raise typer.Exit(1)


@historian_app.command("feed")
def feed_cmd(hours: Annotated[float, typer.Option(help="plant hours to simulate", min=0.01, max=720)] = 6.0,
             run_dir: Annotated[Path, typer.Option("--dir", help="embedded store folder (no InfluxDB)")] = Path("runs/feed"),
             malfunction: Annotated[str | None, typer.Option(
                 "--malfunction", help="scripted fault KIND, KIND:SEVERITY:ONSET or KIND@TARGET:SEVERITY:ONSET, "
                                       "e.g. heater_failure@cell1:0.8:10min; kinds: `pilot train list`")] = None,
             seed: Annotated[int, typer.Option(help="twin noise seed")] = 0,
             config: ConfigOpt = None) -> None:
    """Record a closed-loop run of the twin (ending now) to the configured historian: a quick way to fill the Grafana dashboards.

    The twin runs with every loop in auto through the same control loop as `pilot simulate --control auto`. Recorded: `process` (the twin's tags), `estimate` and `decision` (the estimators and MPCs of that loop), `alarm` (the transitions of the config's alarms in that run: none in a normal run), `kpi` (the twin's KPIs). Nothing is invented: --malfunction injects one fault (twin.malfunctions) at ONSET (default 10min) so the loop and its alarms have something to do."""
    from pilot.historian.feed import parse_malfunction, simulated_run
    from pilot.historian.settings import make_recorder

    logging.basicConfig(level=logging.WARNING)
    fault = None
    if malfunction is not None:
        try:
            fault = parse_malfunction(malfunction)
        except ValueError as exc:
            _fail(str(exc))
    cfg, s = _config(config), _settings()
    rec = make_recorder(s, run_dir).start()
    n = _feed(rec, simulated_run, cfg, hours * 3600, seed, fault)
    ok = rec.drain(120)
    rec.close()
    where = redact_url(s.influx_url) if s.influx_url else str(run_dir)
    out.print(f"{n} points recorded to {where}: {counters_line(rec.counters())}", highlight=False)
    if not ok:
        raise typer.Exit(1)


def _feed(rec, run, cfg, duration_s: float, seed: int, fault) -> int:
    """Record ``run``'s points with a progress bar on stderr; the number of points."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    n = 0
    with Progress(TextColumn("feed"), BarColumn(), TextColumn("{task.fields[plant]}"), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("feed", total=duration_s, plant="0.0 h")
        progress = lambda t, total: bar.update(task, completed=t, plant=f"{t / 3600:.1f} h")  # noqa: E731
        steps = run(cfg, duration_s, epoch_s=time.time() - duration_s, seed=seed, malfunction=fault,
                    progress=progress)
        try:
            first = next(steps)  # the malfunction's target is checked here
        except ValueError as exc:
            rec.close()
            _fail(f"--malfunction: {exc}")
        for points in itertools.chain([first], steps):
            rec.record_many(points)
            n += len(points)
    return n
