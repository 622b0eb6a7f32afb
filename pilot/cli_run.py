"""``pilot run`` (the control loop live over OPC UA) and ``pilot alarms ack|shelve|unshelve|list|mode``
(the operator's actions, through the running loop's operator server). See docs/control_loop.md."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .durations import duration_or_fail
from .live import DEFAULT_OPERATOR_ENDPOINT, OPERATOR_NS

err = Console(stderr=True)
out = Console()
OperatorOpt = Annotated[str, typer.Option(
    "--endpoint", envvar="PILOT_OPERATOR_ENDPOINT",
    help="operator server of the running `pilot run` (loopback)")]

alarms_app = typer.Typer(help="Acknowledge, shelve and list the alarms of a running `pilot run`.",
                         no_args_is_help=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def run_cmd(
    plc: Annotated[str, typer.Option("--plc", envvar="PILOT_OPCUA_ENDPOINT",
                                     help="OPC UA endpoint of the PLC (or of `pilot plc-sim`)")],
    config_path: Annotated[Optional[Path], typer.Argument(
        help="plant YAML file (default: $PILOT_CONFIG, else the shipped pilot_line.yaml)",
        show_default=False)] = None,
    mode: Annotated[str, typer.Option(help="mode of every control loop: manual, advisory or auto")] = "advisory",
    duration: Annotated[Optional[str], typer.Option(
        help="stop after this much plant time (10min, 8h); default: until Ctrl-C")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", help="folder for summary.json and the embedded history (unless PILOT_INFLUX_URL is set)")] = None,
    session: Annotated[str, typer.Option(
        help="live (may write to the PLC), training or standalone (refused against a live PLC)")] = "live",
    operator_endpoint: Annotated[str, typer.Option(
        "--operator-endpoint", envvar="PILOT_OPERATOR_ENDPOINT",
        help="where to serve acknowledge/shelve methods and the .EST tags ('' to disable)")]
        = DEFAULT_OPERATOR_ENDPOINT,
) -> None:
    """Run estimators, MPC, guard and alarms live against PLCs over OPC UA.

    Reads the PLC through the bridge, steps the loop every control period of plant time, writes the
    guarded setpoints (auto loops) and reports every refused write; records process tags,
    estimates, decisions and alarms into the historian. Operators acknowledge and shelve with
    `pilot alarms` while it runs. PLC credentials (writes need the operator role) come from
    PILOT_OPCUA_USER / PILOT_OPCUA_PASSWORD.
    """
    from controllers.guard import LiveWriteForbidden
    from opcua_server.security import client_credentials_from_env

    from .cli_common import load_or_fail
    from .live import run_live

    if mode not in ("manual", "advisory", "auto"):
        _fail(f"--mode must be manual, advisory or auto (got {mode!r})")
    if session not in ("live", "training", "standalone"):
        _fail(f"--session must be live, training or standalone (got {session!r})")
    duration_s = duration_or_fail(duration, _fail)
    config = load_or_fail(config_path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def show(tick, result) -> None:
        refused = len(result.refused) if result else 0
        err.print(f"t={tick.t:.0f}  writes {len(tick.writes)}  advisory {len(tick.advisory)}  held {len(tick.held)}"
                  f"  refused {refused}  alarms {len(tick.active_alarms)}  {tick.latency_s * 1e3:.0f} ms",
                  highlight=False)

    user, password = client_credentials_from_env()
    creds = {"username": user, "password": password} if user else {}
    try:
        res = asyncio.run(run_live(config, plc, mode=mode, duration_s=duration_s, out_dir=out_dir,
                                   session=session, target="live", bridge_options=creds,
                                   operator_endpoint=operator_endpoint or None, on_tick=show))
    except LiveWriteForbidden as exc:
        _fail(str(exc))
    except KeyboardInterrupt:  # pragma: no cover
        return
    except OSError as exc:
        _fail(f"cannot reach {plc}: {exc}")
    lat = res.stats["tick_latency_ms"]
    out.print(f"{res.ticks} ticks; {res.stats['writes_accepted']} writes accepted, {len(res.refused)} refused; "
              f"{res.stats['alarms_raised']} alarms raised; tick p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms")
    for t, tag, value, reason in res.refused[:20]:
        out.print(f"  refused t={t:.0f} {tag} = {value:g}: {reason}", highlight=False)
    if res.summary_path:
        out.print(f"summary: {res.summary_path}")


async def call_operator(endpoint: str, method: str, *args) -> str:
    """Call a method of the running loop's operator server; returns its one-line answer."""
    from asyncua import Client, ua

    async with Client(endpoint, timeout=4.0) as client:
        idx = await client.get_namespace_index(OPERATOR_NS)
        obj = await client.nodes.objects.get_child([f"{idx}:Operator"])
        return await obj.call_method(ua.NodeId(f"Operator.{method}", idx), *args)


def _call(endpoint: str, method: str, *args) -> str:
    try:
        answer = asyncio.run(call_operator(endpoint, method, *args))
    except (OSError, TimeoutError) as exc:
        _fail(f"no running `pilot run` operator server at {endpoint}: {exc}")
    if answer.startswith("error"):
        _fail(answer[len("error: "):])
    return answer


@alarms_app.command("list")
def alarms_list(endpoint: OperatorOpt = DEFAULT_OPERATOR_ENDPOINT,
                as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """The alarm summary: unacknowledged and acknowledged active alarms, returned-to-normal unacknowledged."""
    alarms = json.loads(_call(endpoint, "List"))
    if as_json:
        out.print_json(data=alarms)
        return
    table = Table(title=f"{len(alarms)} alarms")
    for col in ("id", "state", "priority", "value", "since", "position"):
        table.add_column(col)
    for a in alarms:
        table.add_row(a["id"], a["state"], str(a["priority"]), f"{a['value']:.4g}" if a["value"] is not None else "bad",
                      f"{a['since']:.0f}", a["position"])
    out.print(table)


@alarms_app.command("ack")
def alarms_ack(alarm_id: Annotated[str, typer.Argument(help="alarm id, e.g. CELL1.TEMP.HI, or 'all'")],
               operator: Annotated[str, typer.Option(help="who acknowledges (journalled)")],
               endpoint: OperatorOpt = DEFAULT_OPERATOR_ENDPOINT) -> None:
    """Acknowledge an alarm (or all of them)."""
    answer = _call(endpoint, "AcknowledgeAll", operator) if alarm_id == "all" else \
        _call(endpoint, "Acknowledge", alarm_id, operator)
    out.print(answer)


@alarms_app.command("shelve")
def alarms_shelve(alarm_id: Annotated[str, typer.Argument(help="alarm id")],
                  operator: Annotated[str, typer.Option(help="who shelves (journalled)")],
                  duration: Annotated[str, typer.Option(help="shelve for (30min, 2h); at most alarms.max_shelve_s")]
                  = "1h",
                  endpoint: OperatorOpt = DEFAULT_OPERATOR_ENDPOINT) -> None:
    """Shelve an alarm until the duration expires (plant time)."""
    seconds = duration_or_fail(duration, _fail)
    out.print(_call(endpoint, "Shelve", alarm_id, operator, float(seconds)))


@alarms_app.command("unshelve")
def alarms_unshelve(alarm_id: Annotated[str, typer.Argument(help="alarm id")],
                    operator: Annotated[str, typer.Option(help="who unshelves (journalled)")],
                    endpoint: OperatorOpt = DEFAULT_OPERATOR_ENDPOINT) -> None:
    """Return a shelved alarm to service."""
    out.print(_call(endpoint, "Unshelve", alarm_id, operator))


@alarms_app.command("mode")
def alarms_mode(loop: Annotated[str, typer.Argument(help="loop name (cell1, cascade, ...)")],
                mode: Annotated[str, typer.Argument(help="manual, advisory or auto")],
                endpoint: OperatorOpt = DEFAULT_OPERATOR_ENDPOINT) -> None:
    """Change a loop's mode in the running loop (going to auto is bumpless)."""
    out.print(_call(endpoint, "SetMode", loop, mode))
