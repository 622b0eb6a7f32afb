"""``pilot train serve``: a live training session served as a whole plant (docs/training.md)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .cli_common import fail as _fail
from .cli_opcua import AnonymousOpt, ServerPkiOpt, ServerSecurityOpt, StepOpt
from .cli_train_common import ConfigOpt, ScenarioDirOpt, _duration, _scenario, _speed

out = Console()
DEFAULT_TRAINING_OPERATOR_ENDPOINT = "opc.tcp://127.0.0.1:4851"  # beside the plant's operator server (4850)
_LOOP = "Control loop and operator server"


class LoopMode(str, enum.Enum):
    manual = "manual"
    advisory = "advisory"
    auto = "auto"


def serve_cmd(
    scenario: Annotated[str, typer.Argument(help="scenario name or YAML file (its initial condition and faults)")],
    config_path: ConfigOpt = None,
    endpoint: Annotated[str | None, typer.Option(
        help="the simulated PLC: opc.tcp://HOST:PORT (default: opcua.endpoint of the config)",
        show_default=False)] = None,
    speed: Annotated[str, typer.Option(help="0.5..100 or max (the instructor can change it)")] = "1",
    duration: Annotated[str | None, typer.Option(help="stop after this much wall time (default: End, Ctrl-C)")]
        = None,
    restore: Annotated[Path | None, typer.Option(help="start from a saved snapshot instead")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    step: StepOpt = "serve",
    pki: ServerPkiOpt = None,
    security: ServerSecurityOpt = None,
    anonymous: AnonymousOpt = None,
    scenario_dir: ScenarioDirOpt = None,
    snapshot_dir: Annotated[Path, typer.Option(
        help="the server's folder for the instructor's Snapshot / Restore (names outside it are refused)")]
        = Path("training-snapshots"),
    operator_endpoint: Annotated[str, typer.Option(
        "--operator-endpoint", envvar="PILOT_TRAINING_OPERATOR_ENDPOINT", rich_help_panel=_LOOP,
        help="the session's operator server (alarms as Alarms & Conditions, pilot alarms); '' serves the "
             "simulated PLC alone, unscored")] = DEFAULT_TRAINING_OPERATOR_ENDPOINT,
    operator_security: Annotated[str, typer.Option(
        "--operator-security", envvar="PILOT_OPERATOR_SECURITY", rich_help_panel=_LOOP,
        help="endpoints of the operator server, as for pilot run (its certificate: the --pki folder)")]
        = "secure",
    mode: Annotated[LoopMode, typer.Option(rich_help_panel=_LOOP, help="mode of every control loop")]
        = LoopMode.advisory,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", rich_help_panel=_LOOP, show_default=False,
        help="the session's folder: report, audit journal, alarm states, embedded history "
             "(default: training-runs/SESSION_ID)")] = None,
    instructor: Annotated[str, typer.Option(
        rich_help_panel=_LOOP, help="the instructor's name in the report (default: whoever calls End)")] = "",
) -> None:
    """Serve a training session as a whole plant: the twin behind its simulated PLC with the
    instructor controls, and the control loop of `pilot run` against it with its operator server,
    so the trainee works as on the plant (Grafana, an A&C client or `pilot alarms`).

    The trainee logs in (PILOT_OPCUA_USERS / PILOT_OPCUA_SECRETS, operator role) to the PLC to write
    setpoints and to the operator server to acknowledge and shelve; every action is journalled with
    that user and scored live against the scenario (Instructor.Score, Instructor.OpenObjectives; see
    `pilot train instructor URL status`). The session ends by --duration, by the instructor's End
    (`pilot train instructor URL end`) or by Ctrl-C / SIGTERM; the report (HTML, PDF) is written
    into --out then. Points go to the historian (PILOT_INFLUX_URL, else the embedded store in
    --out) under the session's id as their `session` tag. The simulated PLC identifies itself as a
    twin, which is what lets a training session drive it. Every tag refreshes each
    `simulation.serve_step_s` (1 s) of plant time."""
    server_security = _server_security(security, pki, anonymous)  # before the session is built
    sc = _scenario(scenario, scenario_dir)
    session = _session(sc, config_path, step, restore, seed)
    url = _url(endpoint or session.config.opcua.endpoint)
    sp = _speed(speed)
    duration_s = None if duration is None else _duration(duration)
    try:
        if not operator_endpoint:
            return _serve_plc_only(session, sc, url, sp, duration_s, server_security, snapshot_dir)
        _serve_plant(session, sc, url, sp, duration_s, server_security, operator_endpoint, operator_security,
                     pki, anonymous, mode.value, out_dir, instructor, snapshot_dir)
    finally:
        session.close()  # its control loop's workers (also when serving never started)


def _server_security(security, pki, anonymous):
    from .cli_opcua import server_security_or_fail

    return server_security_or_fail(security, pki, anonymous)


def _url(url: str) -> str:
    from .cli_opcua import check_endpoint

    return check_endpoint(url)


def _session(sc, config_path, step, restore, seed):
    from pilot.training.session import Action, TrainingSession

    from .cli_common import load_or_fail
    from .cli_opcua import step_or_fail

    config = load_or_fail(config_path)
    config = config.served(step_or_fail(step, config))  # the session ticks on the served step
    if restore is not None:
        return TrainingSession.restore(restore, config)
    session = TrainingSession(config, initial=sc.initial, seed=seed, control=sc.control, modes=sc.modes,
                              config_path=str(config_path) if config_path else None)
    for m in sc.malfunctions:
        session.submit(Action(t=0.0, kind="inject", args={"malfunction": m.model_dump()}, by="scenario"))
    return session


def _serve_plc_only(session, sc, url, sp, duration_s, server_security, snapshot_dir) -> None:
    import asyncio

    from opcua_server.instructor import MAX_SPEED, serve_training
    from pilot.training.session import TrainingSession

    out.print(f"training session {session.session_id} ({sc.name}) at {url}, simulated PLC only; Ctrl-C to stop")
    _serving(lambda: asyncio.run(serve_training(session, url, speed=MAX_SPEED if sp is None else sp,
                                                duration_s=duration_s, security=server_security,
                                                restore=TrainingSession.restore, scenario=sc.name,
                                                snapshot_dir=snapshot_dir)), url)
    out.print(f"stopped at session time {session.t:.0f} s")


def _serve_plant(session, sc, url, sp, duration_s, server_security, operator_endpoint, operator_security, pki,
                 anonymous, mode, out_dir, instructor, snapshot_dir) -> None:
    import asyncio
    import logging

    from opcua_server.instructor import MAX_SPEED
    from pilot.training.served import ServedOptions, serve_plant
    from pilot.training.session import TrainingSession

    from .cli_run import operator_security_or_fail

    op_url = _url(operator_endpoint)
    op_security = operator_security_or_fail(operator_security, pki or Path("pki"), anonymous)
    out_dir = out_dir or Path("training-runs") / session.session_id
    if not len(server_security.users):
        out.print("[yellow]no users configured (PILOT_OPCUA_USERS / PILOT_OPCUA_SECRETS): trainees can watch "
                  "but not act, and nothing can be scored[/yellow]")
    opts = ServedOptions(plc_endpoint=url, operator_endpoint=op_url, plc_security=server_security,
                         operator_security=op_security, out_dir=out_dir,
                         speed=MAX_SPEED if sp is None else sp, duration_s=duration_s, mode=mode,
                         instructor=instructor, handle_signals=True, snapshot_dir=snapshot_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    out.print(f"training session {session.session_id} ({sc.name}): simulated PLC at {url}, operator server at "
              f"{op_url}, folder {out_dir}; end with `pilot train instructor {url} end` or Ctrl-C")
    result = _serving(lambda: asyncio.run(serve_plant(session, sc, opts, restore=TrainingSession.restore)), url)
    if result is None:
        return
    s = result.score
    out.print(f"session {s.session_id} ended ({result.ended_by}) at session time {s.record.t_end:.0f} s: "
              f"score {s.score:.1f}/100, met {', '.join(s.met) or 'none'}; trainee "
              f"{s.record.trainee or 'nobody'}")
    out.print(f"report: {result.report}")


def _serving(run, url: str):
    """Run the server(s); one red line for what stops them from starting."""
    from controllers.guard import LiveWriteForbidden
    from opcua_server.security import SecurityError

    try:
        return run()
    except KeyboardInterrupt:
        return None
    except (SecurityError, LiveWriteForbidden) as exc:  # e.g. a PKI folder with a key but no certificate
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot serve at {url}: {exc.strerror or exc}")
