"""``pilot train ...``: operator training on the twin (scenarios, scripted trainees, snapshots, reports).
See docs/training.md. Bad input ends with one red line and exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .cli_common import fail as _fail
from .cli_opcua import AnonymousOpt, ServerPkiOpt, ServerSecurityOpt
from .durations import duration_or_fail

out = Console()
train_app = typer.Typer(help="Operator training: run scenarios on the twin, score trainees, snapshots.",
                        no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="plant YAML file (default: the shipped pilot_line.yaml)", show_default=False)]


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        v = float(text.rstrip("x"))
    except ValueError:
        v = -1.0
    if not 0.5 <= v <= 100:
        _fail(f"--speed must be 0.5..100 or max; got {text!r}")
    return v


def _duration(text: str) -> float:
    return duration_or_fail(text, _fail)


def _scenario(name: str):
    from pilot.training.scenario import load_scenario
    from pilot_config import ConfigError

    from .cli_common import fail_issues

    try:
        return load_scenario(name)
    except FileNotFoundError:
        _fail(f"no scenario {name!r}: give a YAML file or a name from `pilot train list`")
    except ConfigError as exc:
        fail_issues(exc, f"scenario {name}")


def _trainee(path: Path):
    from pilot.training.scenario import load_trainee
    from pilot_config import ConfigError

    from .cli_common import fail_issues

    try:
        return load_trainee(path)
    except ConfigError as exc:
        fail_issues(exc, f"trainee actions {path}")


@train_app.command("list")
def list_cmd() -> None:
    """The shipped scenarios, initial conditions and malfunction kinds."""
    from pilot.training.scenario import load_scenario, shipped_scenarios
    from pilot.training.session import INITIAL_CONDITIONS
    from twin.malfunctions import PROCESS_KINDS, SIGNAL_KINDS

    table = Table()
    table.add_column("scenario", no_wrap=True)
    for name in ("title", "initial", "plant time", "malfunctions"):
        table.add_column(name, overflow="fold")
    for p in shipped_scenarios():
        s = load_scenario(p)
        table.add_row(s.name, s.title, s.initial, f"{s.duration_s / 60:.0f} min",
                      ", ".join(f"{m.kind}@{m.target}" for m in s.malfunctions))
    out.print(table)
    out.print("initial conditions: " + "; ".join(f"[bold]{k}[/]: {v}" for k, v in INITIAL_CONDITIONS.items()))
    out.print(f"malfunctions: process {', '.join(PROCESS_KINDS)}; signal {', '.join(SIGNAL_KINDS)}")


@train_app.command("run")
def run_cmd(
    scenario: Annotated[str, typer.Argument(help="scenario name (`pilot train list`) or YAML file")],
    config_path: ConfigOpt = None,
    speed: Annotated[str, typer.Option(help="plant seconds per wall second, 0.5..100, or max")] = "max",
    trainee_actions: Annotated[Path | None, typer.Option(
        "--trainee-actions", help="scripted trainee (YAML list of actions) instead of a live trainee")] = None,
    report: Annotated[Path, typer.Option(help="folder for report.html and trends.png")] = Path("training-report"),
    seed: Annotated[int | None, typer.Option(help="sensor-noise seed (default: from the config)")] = None,
    snapshot: Annotated[Path | None, typer.Option(help="save the session's final snapshot here")] = None,
    history: Annotated[Path | None, typer.Option(
        help="record every tick into DIR/history.sqlite, points tagged session=<id>")] = None,
    control: Annotated[bool | None, typer.Option(
        "--control/--no-control", help="run the closed loop in the session (default: as the scenario says)",
        show_default=False)] = None,
) -> None:
    """Run a scenario to its end, score the trainee and write the report."""
    from pilot.training.report import score_run, write_report
    from pilot.training.scenario import run_scenario

    from .cli_common import load_or_fail

    sc = _scenario(scenario)
    config = load_or_fail(config_path)
    trainee = None
    if trainee_actions is not None:
        trainee = _trainee(trainee_actions)
    sink = None
    if history is not None:
        from pilot.historian.sqlite import SqliteSink, history_path

        history.mkdir(parents=True, exist_ok=True)
        sink = SqliteSink(history_path(history))
        sink.open()
    try:
        session, rec = run_scenario(sc, config, trainee=trainee, seed=seed, speed=_speed(speed), control=control,
                                    on_tick=(lambda s, tk: sink.write_batch(s.points(tk))) if sink else None)
    except ValueError as exc:
        _fail(str(exc))
    finally:
        if sink is not None:
            sink.close()
    score = score_run(sc, session, rec)
    path = write_report(sc, session, rec, score, report)
    if snapshot is not None:
        session.save(snapshot, label="end")
    table = Table("response", "met", "time to act, s", "points")
    for r in score.responses:
        table.add_row(r.text, "yes" if r.met else f"no ({r.note})",
                      "—" if r.time_to_act_s is None else f"{r.time_to_act_s:.0f}", f"{r.points:g}")
    out.print(table)
    out.print(f"session {session.session_id}: score [bold]{score.score:.0f}[/]/100, off-spec Tb "
              f"{score.off_spec_kg:.3f} kg; report {path}")


@train_app.command("snapshot")
def snapshot_cmd(
    scenario: Annotated[str, typer.Argument(help="scenario name or YAML file")],
    at: Annotated[str, typer.Option(help="session time of the snapshot (30min, 2h)")],
    out_file: Annotated[Path, typer.Option("--out", help="snapshot file (JSON)")],
    config_path: ConfigOpt = None,
    trainee_actions: Annotated[Path | None, typer.Option("--trainee-actions")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Run a scenario to a time (as fast as possible) and save the session there."""
    from pilot.training.scenario import run_scenario

    from .cli_common import load_or_fail

    sc = _scenario(scenario).model_copy(update={"duration_s": _duration(at)})
    config = load_or_fail(config_path)
    session, _ = run_scenario(sc, config, trainee=_trainee(trainee_actions) if trainee_actions else None,
                              seed=seed)
    session.save(out_file, label=f"{sc.name} at {at}")
    out.print(f"saved {out_file} (session {session.session_id}, t = {session.t:.0f} s, "
              f"{len(session.journal)} journalled actions)")


@train_app.command("restore")
def restore_cmd(
    snapshot_file: Annotated[Path, typer.Argument(help="a snapshot saved by `pilot train snapshot` or run")],
    run_for: Annotated[str | None, typer.Option("--run", help="then run this much plant time (30min)")] = None,
    speed: Annotated[str, typer.Option(help="0.5..100 or max")] = "max",
    out_file: Annotated[Path | None, typer.Option("--out", help="save the session here at the end")] = None,
) -> None:
    """Rebuild a saved session (journal replay), optionally run on and save again."""
    import time

    from pilot.training.session import Pacer, TrainingSession

    if not snapshot_file.exists():
        _fail(f"no snapshot file {snapshot_file}")
    t0 = time.perf_counter()
    try:
        session = TrainingSession.restore(snapshot_file)
    except ValueError as exc:
        _fail(f"{snapshot_file}: {exc}")
    out.print(f"restored session {session.session_id} at t = {session.t:.0f} s in {time.perf_counter() - t0:.2f} s")
    if run_for is not None:
        seconds = _duration(run_for)
        sp = _speed(speed)
        session.run_for(seconds, None if sp is None else Pacer(sp))
        out.print(f"ran to t = {session.t:.0f} s; active alarms: "
                  + (", ".join(a.alarm_id for a in session.alarms.active()) or "none"))
    if out_file is not None:
        session.save(out_file)
        out.print(f"saved {out_file}")


@train_app.command("serve")
def serve_cmd(
    scenario: Annotated[str, typer.Argument(help="scenario name or YAML file (its initial condition and faults)")],
    config_path: ConfigOpt = None,
    endpoint: Annotated[str | None, typer.Option(
        help="opc.tcp://HOST:PORT (default: opcua.endpoint of the config)", show_default=False)] = None,
    speed: Annotated[str, typer.Option(help="0.5..100 or max (the instructor can change it)")] = "1",
    duration: Annotated[str | None, typer.Option(help="stop after this much wall time (default: Ctrl-C)")] = None,
    restore: Annotated[Path | None, typer.Option(help="start from a saved snapshot instead")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    pki: ServerPkiOpt = None,
    security: ServerSecurityOpt = None,
    anonymous: AnonymousOpt = None,
) -> None:
    """Serve a live training session on the simulated PLC, with the instructor's OPC UA methods
    (Instructor.Freeze / Resume / SetSpeed / Snapshot / Restore / Backtrack / InjectMalfunction;
    they need the engineer role). Security options and users as for `pilot plc-sim`."""
    import asyncio

    from opcua_server.instructor import MAX_SPEED, serve_training
    from opcua_server.security import SecurityError
    from pilot.training.session import Action, TrainingSession

    from .cli_common import load_or_fail
    from .cli_opcua import check_endpoint, server_security_or_fail

    server_security = server_security_or_fail(security, pki, anonymous)  # before the session is built
    sc = _scenario(scenario)
    config = load_or_fail(config_path)
    if restore is not None:
        session = TrainingSession.restore(restore, config)
    else:
        session = TrainingSession(config, initial=sc.initial, seed=seed, control=sc.control, modes=sc.modes)
        for m in sc.malfunctions:
            session.submit(Action(t=0.0, kind="inject", args={"malfunction": m.model_dump()}, by="scenario"))
    url = check_endpoint(endpoint or config.opcua.endpoint)
    sp = _speed(speed)
    out.print(f"training session {session.session_id} ({sc.name}) at {url}; Ctrl-C to stop")
    try:
        asyncio.run(serve_training(session, url, speed=MAX_SPEED if sp is None else sp,
                                   duration_s=None if duration is None else _duration(duration),
                                   security=server_security, restore=TrainingSession.restore))
    except KeyboardInterrupt:
        pass
    except SecurityError as exc:  # e.g. a PKI folder with a key but no certificate
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot serve at {url}: {exc.strerror or exc}")
    out.print(f"stopped at session time {session.t:.0f} s")
