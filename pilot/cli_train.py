"""``pilot train ...``: operator training on the twin (scenarios, scripted trainees, snapshots, reports).
See docs/training.md. Bad input ends with one red line and exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .cli_common import fail as _fail
from .cli_train_common import (
    ConfigOpt,
    ScenarioDirOpt,
    _duration,
    _scenario,
    _scenario_dirs,
    _speed,
)

out = Console()
train_app = typer.Typer(help="Operator training: run scenarios on the twin, score trainees, snapshots.",
                        no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
def _trainee(path: Path):
    from pilot.training.scenario import load_trainee
    from pilot_config import ConfigError

    from .cli_common import fail_issues

    try:
        return load_trainee(path, _scenario_dirs())
    except ConfigError as exc:
        fail_issues(exc, f"trainee actions {path}")


def _mmss(seconds: float) -> str:
    """Plant time as min:s (``75:00``)."""
    m, sec = divmod(round(seconds), 60)
    return f"{m}:{sec:02d}"


def _fault(m) -> str:
    return f"{m.kind} on {m.target} at {_mmss(m.onset_s)}"


def _catalogue(paths):
    """The scenarios as a two-column table that wraps between words (80 columns and up)."""
    from rich import box
    from rich.text import Text

    from pilot.training.scenario import load_scenario

    table = Table("scenario", "what it trains (plant times in min:s)", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.columns[0].no_wrap = True
    for p in paths:
        s = load_scenario(p)
        table.add_row(Text(p.stem, style="bold") + Text(f"\n  {s.initial}, lasts {_mmss(s.duration_s)}", "dim"),
                      Text(s.title) + Text("\nfaults: " + ("; ".join(_fault(m) for m in s.malfunctions) or "none"), "dim"))
    return table


def _grid(rows) -> Table:
    """Key, value rows: the key never wraps, the value wraps between words."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    for k, v in rows:
        grid.add_row(k, v)
    return grid


@train_app.command("list")
def list_cmd(scenario_dir: ScenarioDirOpt = None) -> None:
    """The scenarios (shipped, and a trainer's own folders), initial conditions and malfunction kinds;
    `pilot train show NAME` for one scenario's detail."""
    from pilot.training.scenario import shipped_scenarios
    from pilot.training.session import INITIAL_CONDITIONS
    from pilot_config import ConfigError
    from twin.malfunctions import PROCESS_KINDS, SIGNAL_KINDS

    from .cli_common import fail_issues

    try:
        out.print(_catalogue(shipped_scenarios(_scenario_dirs(scenario_dir))))
    except ConfigError as exc:
        fail_issues(exc, "a scenario file")
    out.print("[bold]initial conditions[/]")
    out.print(_grid(INITIAL_CONDITIONS.items()))
    out.print("[bold]malfunction kinds[/]")
    out.print(_grid([("process", ", ".join(PROCESS_KINDS)), ("signal", ", ".join(SIGNAL_KINDS))]))
    out.print("detail of one scenario: pilot train show NAME")


def _objectives(sc) -> list[tuple[str, str]]:
    rows = []
    for r in sc.responses:
        start = r.after_alarm or (f"t = {_mmss(r.after_s)}" if r.after_s is not None else "the first fault")
        rows.append((r.id, f"{r.text or r.kind + ' ' + (r.alarm or r.tag)} ({r.points:g} points; timed from "
                           f"{start}, {_mmss(r.within_s)} allowed)"))
    return rows


def _faults(sc) -> list[tuple[str, str]]:
    return [(m.kind, f"on {m.target}: onset {_mmss(m.onset_s)}, ramp {_mmss(m.ramp_s)}, severity {m.severity:g}, "
                     + ("until cleared" if m.duration_s is None else f"lasts {_mmss(m.duration_s)}"))
            for m in sc.malfunctions]


def _scoring(sc) -> list[tuple[str, str]]:
    rows = []
    for s in sc.spec:
        limits = " and ".join(x for x in (s.low is not None and f">= {s.low:g}",
                                          s.high is not None and f"<= {s.high:g}") if x)
        rows.append((s.tag, f"kept {limits}; {s.penalty_per_min:g} points per minute out, at most {s.max_penalty:g}"))
    for k in ("off_spec", "unacknowledged"):
        if hasattr(sc, k):
            rows.append((k, ", ".join(f"{n} {v:g}" for n, v in getattr(sc, k).model_dump().items())))
    return rows


@train_app.command("show")
def show_cmd(
    name: Annotated[str, typer.Argument(help="scenario name (`pilot train list`) or YAML file")],
    scenario_dir: ScenarioDirOpt = None,
) -> None:
    """One scenario in full: what it teaches, initial condition, malfunctions (onset, ramp, severity),
    objectives with their points, specs and the scripted trainee."""
    from rich.text import Text

    from pilot.training.scenario import find_scenario
    from pilot.training.session import INITIAL_CONDITIONS

    sc = _scenario(name, scenario_dir)
    out.print(Text(f"{sc.name}: {sc.title}", style="bold"))
    out.print(Text(sc.teaches or "(no description)"))
    out.print(f"file: {find_scenario(name, _scenario_dirs(scenario_dir))}", soft_wrap=True, highlight=False)
    loop = ("on, modes " + ", ".join(f"{k} {v}" for k, v in sc.modes.items())) if sc.control else "off"
    out.print(_grid([("initial", f"{sc.initial}: {INITIAL_CONDITIONS[sc.initial]}"),
                     ("duration", f"{_mmss(sc.duration_s)} of plant time (times here in min:s)"),
                     ("control loop", loop)]))
    sections = [("malfunctions", _faults(sc) or [("none", "")]), ("objectives (expected responses)", _objectives(sc)),
                ("scoring", _scoring(sc))]
    if sc.expected is not None:
        e = sc.expected
        sections.append(("scripted trainee", [("file", e.trainee), ("meets", ", ".join(e.met) or "nothing"),
                                              ("scores", f"{e.score_min:g} to {e.score_max:g}")]))
    for title, rows in sections:
        out.print(f"[bold]{title}[/]")
        out.print(_grid([(f"  {k}", v) for k, v in rows]))


@train_app.command("run")
def run_cmd(
    scenario: Annotated[str, typer.Argument(help="scenario name (`pilot train list`) or YAML file")],
    config_path: ConfigOpt = None,
    speed: Annotated[str, typer.Option(help="plant seconds per wall second, 0.5..100, or max")] = "max",
    trainee_actions: Annotated[Path | None, typer.Option(
        "--trainee-actions", help="scripted trainee (YAML list of actions) instead of a live trainee")] = None,
    report: Annotated[Path, typer.Option(help="folder for report.html, report.pdf and trends.png")] = Path(
        "training-report"),
    trainee_name: Annotated[str | None, typer.Option("--trainee", help="trainee's name in the record (default: "
                                                     "the scripted trainee's file name)", show_default=False)] = None,
    instructor: Annotated[str, typer.Option(help="instructor's name in the record")] = "",
    seed: Annotated[int | None, typer.Option(help="sensor-noise seed (default: from the config)")] = None,
    snapshot: Annotated[Path | None, typer.Option(help="save the session's final snapshot here")] = None,
    history: Annotated[Path | None, typer.Option(
        help="record every tick into DIR/history.sqlite, points tagged session=<id>")] = None,
    control: Annotated[bool | None, typer.Option(
        "--control/--no-control", help="run the closed loop in the session (default: as the scenario says)",
        show_default=False)] = None,
) -> None:
    """Run a scenario to its end, score the trainee and file the training record (report.html with an
    A4 print stylesheet, report.pdf, trends.png)."""
    from pilot.training.report import record_lines, score_run, write_report
    from pilot.training.scenario import run_scenario
    from pilot_config import default_config_path

    from .cli_common import config_path_or_env, load_or_fail

    sc = _scenario(scenario)
    config = load_or_fail(config_path)
    trainee = None
    if trainee_actions is not None:
        trainee = _trainee(trainee_actions)
    if trainee_name is None:
        trainee_name = f"scripted {trainee_actions.name.removesuffix('.yaml')}" if trainee_actions else ""
    if len(trainee_name) > 64 or len(instructor) > 64:
        _fail("--trainee and --instructor: at most 64 characters each")
    identity = dict(trainee_name=trainee_name, instructor=instructor,
                    config_path=str(config_path_or_env(config_path) or default_config_path()))
    sink = None
    if history is not None:
        from pilot.historian.sqlite import SqliteSink, history_path

        history.mkdir(parents=True, exist_ok=True)
        sink = SqliteSink(history_path(history))
        sink.open()
    try:
        session, rec = run_scenario(sc, config, trainee=trainee, seed=seed, speed=_speed(speed), control=control,
                                    on_tick=(lambda s, tk: sink.write_batch(s.points(tk))) if sink else None,
                                    **identity)
    except ValueError as exc:
        _fail(str(exc))
    finally:
        if sink is not None:
            sink.close()
    score = score_run(sc, session, rec)
    path = write_report(sc, session, rec, score, report)
    if snapshot is not None:
        session.save(snapshot, label="end")
    from pilot.training.report_pages import mmss

    out.print("; ".join(f"{k} {v}" for k, v in record_lines(sc, score)[:3]))
    table = Table("response", "met", "time to act, min:s", "points")
    for r in score.responses:
        table.add_row(r.text, "yes" if r.met else f"no ({r.note})",
                      "—" if r.time_to_act_s is None else mmss(r.time_to_act_s), f"{r.points:g}")
    out.print(table)
    out.print(f"session {session.session_id}: score [bold]{score.score:.0f}[/]/100, off-spec Tb "
              f"{100 * score.off_spec_fraction:.0f} % of the product; report {path} and {path.with_suffix('.pdf')}")


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
    session.close()


from .cli_instructor import instructor_app  # noqa: E402  (pilot train instructor URL ...)

train_app.add_typer(instructor_app, name="instructor")

from .cli_train_serve import serve_cmd  # noqa: E402  (pilot train serve ...)

train_app.command("serve")(serve_cmd)
