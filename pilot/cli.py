"""``pilot``: the command line of the pilot-line control system and digital twin."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pilot_config import config_schema

from .cli_common import config_path_or_env, fail, load_or_fail
from .cli_historian import historian_app
from .cli_opcua import AnonymousOpt, ServerPkiOpt, ServerSecurityOpt, StepOpt, opcua_app
from .durations import duration_or_fail, parse_duration

app = typer.Typer(
    help="Digital twin and control system of the Dy/Tb recovery pilot line.\n\n"
    "Start with `pilot simulate` (runs the shipped line for 24 plant-hours, no PLC or database "
    "needed), then `pilot history DIR --tag NAME` to read a recorded series. Add `--control auto` to "
    "run the estimators, MPC, guard and alarms with it.\n\n"
    "Against PLCs: `pilot plc-sim` serves the twin as a simulated PLC over OPC UA; `pilot run --plc URL` "
    "runs the control loop against it or the real PLCs; `pilot alarms` acknowledges and shelves. "
    "Trainers: `pilot train list`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Check plant configuration files and print their schema.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(opcua_app, name="opcua")
app.add_typer(historian_app, name="historian")
err = Console(stderr=True)
out = Console()

ConfigArg = Annotated[
    Optional[Path],
    typer.Argument(help="plant YAML file (default: $PILOT_CONFIG, else the shipped pilot_line.yaml)",
                   show_default=False),
]


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="plant YAML file to check")]) -> None:
    """Validate FILE: print every error with file, line, YAML path, value and what is allowed."""
    config = load_or_fail(path)
    out.print(f"[green]ok[/] {path}: line {config.name!r}, {len(config.tags)} tags, "
              f"{len(config.electrolysis.cells)} cells, contactor {config.extraction.contactor}")
    plc_tags = config.plc_tags()
    out.print(f"{len(plc_tags)} PLC{'s' if len(plc_tags) > 1 else ''}:", highlight=False)
    for plc in config.opcua.resolved_plcs():
        units = ", ".join(plc.units) if plc.units else "every unclaimed tag"
        out.print(f"  {plc.name}: {len(plc_tags[plc.name])} tags at {plc.endpoint} (namespace "
                  f"{plc.namespace_uri}; units {units})", highlight=False, markup=False, soft_wrap=True)


@config_app.command("schema")
def config_schema_cmd() -> None:
    """Print the JSON Schema of plant YAML files (for editors and reviews)."""
    sys.stdout.write(json.dumps(config_schema(), indent=2) + "\n")


@app.command()
def simulate(
    config_path: ConfigArg = None,
    until: Annotated[str, typer.Option("--until", help="plant time to run: 30min, 24h, 2d")] = "24h",
    out_dir: Annotated[Path, typer.Option("--out", help="folder for summary.json, history and plots")] = Path("out/run"),
    speed: Annotated[Optional[float], typer.Option(
        "--speed", help="pace at X times real time (default: as fast as possible)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="sensor-noise seed (default: from the config)")] = None,
    plots: Annotated[bool, typer.Option(help="write PNG plots")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    control: Annotated[str, typer.Option(
        help="off: open loop; advisory / auto: the control loop (estimators, MPC, guard, alarms) "
             "in-process, every loop in that mode")] = "off",
) -> None:
    """Run the pilot line standalone on the twin and write KPIs, history and plots.

    Writes DIR/summary.json (plant/wall time, real-time factor, final tag values, KPIs),
    DIR/history.sqlite (every tag's time series; read it with `pilot history`) and DIR/*.png,
    drawn after the summary is written and shown (a plot that cannot be drawn is named; exit 1).
    """
    try:
        until_s = parse_duration(until)
    except ValueError as exc:
        fail(str(exc))
    if speed is not None and not (0 < speed <= 1e6):
        fail(f"--speed must be a positive factor of real time (got {speed})")
    if control not in ("off", "advisory", "auto"):
        fail(f"--control must be off, advisory or auto (got {control!r})")
    config = load_or_fail(config_path)
    from .app import draw_plots
    from .app import simulate as run

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.fields[plant]}"), TimeElapsedColumn(),
                  console=err, disable=quiet, transient=False) as bar:
        task = bar.add_task(config.name, total=until_s, plant="0.0 h")

        def progress(t: float, total: float) -> None:
            bar.update(task, completed=t, plant=f"{t / 3600:.1f} h of {total / 3600:.1f} h")

        try:
            result = run(config, until_s, out_dir, speed=speed, seed=seed, progress=progress,
                         make_plots=False, control=control)
        except OSError as exc:
            fail(f"cannot write to {out_dir}: {exc}")
    print_summary(result.summary)  # written and shown before the plots are drawn
    out.print(f"\nsummary: {out_dir / 'summary.json'}\nhistory: {out_dir / 'history.sqlite'} "
              f"(`pilot history {out_dir} --tag NAME`)")
    if plots:
        result = draw_plots(result, config)
    for p in result.plots:
        out.print(f"plot:    {p}")
    for line in result.plot_errors:
        err.print(f"[bold red]error:[/] plot {line}", highlight=False, soft_wrap=True)
    if result.plot_errors:
        raise typer.Exit(1)


def print_summary(summary: dict) -> None:
    table = Table(title=f"KPIs after {summary['plant_time_s'] / 3600:.1f} plant-hours "
                        f"({summary['realtime_factor']:.0f}x real time)")
    table.add_column("KPI")
    table.add_column("value", justify="right")
    for key, value in summary["kpis"].items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {_num(v)}" for k, v in value.items())
        table.add_row(key, _num(value))
    out.print(table)
    c = summary.get("control")
    if c:
        lat = c["tick_latency_ms"]
        out.print(f"control ({', '.join(f'{k} {v}' for k, v in c['modes'].items())}): {c['ticks']} ticks, "
                  f"{c['ticks_with_holds']} with holds, {c['writes_accepted']} writes, "
                  f"{sum(c['writes_refused'].values())} refused, {c['alarms_raised']} alarms raised; "
                  f"tick p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms")


def _num(v) -> str:
    if isinstance(v, float):
        return f"{v:.1e}" if v != 0 and abs(v) < 1e-3 else f"{v:.6g}"
    return "n/a" if v is None else str(v)


@app.command()
def history(
    run_dir: Annotated[Path, typer.Argument(help="output folder of `pilot simulate`")],
    tag: Annotated[Optional[str], typer.Option(help="tag to print (omit to list the tags)")] = None,
    csv: Annotated[bool, typer.Option(help="print CSV (time_s,value,quality)")] = False,
) -> None:
    """Read a recorded series back from a run's embedded historian."""
    from .historian.sqlite import history_path, list_tags, read_series

    path = history_path(run_dir)
    if not path.is_file():
        fail(f"no historian at {path}: run `pilot simulate --out {run_dir}` first")
    if tag is None:
        for name in list_tags(path):
            out.print(name, highlight=False)
        return
    try:
        series = read_series(path, tag)
    except KeyError:
        names = list_tags(path)
        near = [n for n in names if tag.lower() in n.lower()][:10]
        fail(f"unknown tag {tag!r} in {path}" + (f"; did you mean {near}?" if near else
             f"; {len(names)} tags recorded, list them with `pilot history {run_dir}`"))
    if csv:
        sys.stdout.write("time_s,value,quality\n")
        for t, v, q in zip(series.time_s, series.value, series.quality):
            sys.stdout.write(f"{t:.3f},{v:.9g},{q}\n")
        return
    table = Table(title=f"{tag} ({len(series.value)} samples)")
    for col in ("plant time", "value", "quality"):
        table.add_column(col, justify="right")
    step = max(1, len(series.value) // 40)
    for t, v, q in list(zip(series.time_s, series.value, series.quality))[::step]:
        table.add_row(f"{t / 3600:.2f} h", f"{v:.6g}", q)
    out.print(table)
    out.print(f"(every {step}th sample shown; use --csv for all)")


@app.command("plc-sim")
def plc_sim_cmd(
    config_path: ConfigArg = None,
    plc: Annotated[Optional[list[str]], typer.Option(
        "--plc", help="serve only this PLC of the config (repeatable; default: every PLC, one server each)",
        show_default=False)] = None,
    endpoint: Annotated[Optional[list[str]], typer.Option(
        help="NAME=opc.tcp://HOST:PORT: where PLC NAME listens (repeatable; default: its endpoint in the "
             "config); a bare URL: every tag on that one server (or the one --plc there)",
        show_default=False)] = None,
    speed: Annotated[float, typer.Option(help="plant time runs X times faster than real time")] = 1.0,
    duration: Annotated[Optional[str], typer.Option(
        help="stop after this much plant time (30min, 24h); default: run until Ctrl-C")] = None,
    pki: ServerPkiOpt = None,
    security: ServerSecurityOpt = None,
    anonymous: AnonymousOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="sensor-noise seed (default: from the config)")] = None,
    step: StepOpt = "sync",
) -> None:
    """Serve the config's PLCs over OPC UA, one server each, driven by one twin in real time (or X times faster).

    Every PLC of `opcua.plcs` gets its own endpoint, namespace, tags, heartbeat and watchdog; writes through any of them reach the same twin. `--plc NAME` serves only that one (a process of its own has its own twin: stop or kill it as one PLC).

    Measurements are read-only AnalogItems with EURange and EngineeringUnits; setpoints are writable by the operator role, limits and tuning by the engineer role; anonymous sessions only read, and are accepted only when no users are configured unless --anonymous says otherwise. Users and roles come from PILOT_OPCUA_USERS / PILOT_OPCUA_SECRETS, never from the YAML (passwords of at least PILOT_OPCUA_MIN_PASSWORD_LENGTH characters, default 12). Each request is authorised by its own session; failed logins are answered ever later (per client). Out-of-range writes are refused with BadOutOfRange. See docs/opcua.md and docs/security.md.
    """
    from .cli_opcua import plc_sim

    duration_s = duration_or_fail(duration, fail)
    plc_sim(config_path_or_env(config_path), endpoint, speed,
            duration_s=None if duration_s is None else duration_s / speed,  # plant s -> wall s
            pki=pki, security=security, allow_anonymous=anonymous, seed=seed, plcs=plc, step=step)


from .cli_alarms import alarms_app  # noqa: E402  (pilot alarms)
from .cli_replay import replay_cmd  # noqa: E402  (pilot replay)
from .cli_run import run_cmd  # noqa: E402  (pilot run)
from .cli_sweep import sweep_cmd  # noqa: E402  (pilot sweep)
from .cli_whatif import whatif_cmd  # noqa: E402  (pilot whatif)

app.command("run")(run_cmd)
app.command("sweep")(sweep_cmd)
app.command("whatif", help=whatif_cmd.__doc__)(whatif_cmd)
app.command("replay")(replay_cmd)
app.add_typer(alarms_app, name="alarms")

from .cli_train import train_app  # noqa: E402  (training helper: pilot train)

app.add_typer(train_app, name="train")


def main() -> None:  # pragma: no cover
    app()
