"""``pilot whatif``: ask the running loop (``pilot run``, or a served training session) what a
change would do from now: its operator server forks the loop's current estimate into twins and runs
the base case and the proposed change in a worker process; this command waits for the result and
writes whatif.json, trajectories.csv and whatif.png, and shows the differences table."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from opcua_server.operator import DEFAULT_OPERATOR_ENDPOINT

from . import cli_security as sec
from .cli_common import fail
from .durations import duration_or_fail, parse_duration

POLL_S = 2.0
RECONNECTS = 5
HELP = (
    "What a change would do from now, simulated from the running loop's own estimate of the plant.\n\n"
    "The operator server of `pilot run` (or of `pilot train serve`) takes every unit's current estimate "
    "(the cells' salt, cathode, temperature and current efficiency; the cascade's extractant activity, feed "
    "Dy/Tb and KPIs; the columns' capacities), builds twins set to it, and runs the base case (nothing "
    "changed) and your case for --horizon with the loop in --mode. Needs the engineer role; the runs "
    "take a worker process on the loop's host, never the control tick.\n\n"
    "Examples:\n\n"
    "pilot whatif --user erin --change SX.ORG.FLOW_SP=35 --mode advisory --horizon 4h\n\n"
    "pilot whatif --malfunction extractant_degradation:extraction:0.1:0:1h --horizon 2h\n\n"
    "pilot whatif --weight cascade.move_weight=0.1 --mode auto --out runs/weights\n\n"
    "Outputs in --out (default whatif-<time>): whatif.json (everything), trajectories.csv, whatif.png "
    "(each KPI against hours from the fork, the base with the estimators' ±2σ band); the differences "
    "table (case − base, and the MPC's linear prediction for cascade setpoint changes) is printed.")


def _pair(text: str, option: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise ValueError(f"{option} {text!r}: use NAME=NUMBER, e.g. SX.ORG.FLOW_SP=35") from None


def _malfunction(text: str) -> dict:
    parts = text.split(":")
    if len(parts) < 3 or len(parts) > 5:
        raise ValueError(f"--malfunction {text!r}: use KIND:TARGET:SEVERITY[:ONSET[:RAMP]], e.g. "
                         "extractant_degradation:extraction:0.1:0:1h (onset and ramp from the fork)")
    kind, target, severity, *rest = parts
    times = [0.0 if r.strip() in ("", "0") else parse_duration(r) for r in rest]
    try:
        sev = float(severity)
    except ValueError:
        raise ValueError(f"--malfunction {text!r}: severity {severity!r} is not a number") from None
    return {"kind": kind, "target": target, "severity": sev, "onset_s": (times + [0.0])[0],
            "ramp_s": (times + [0.0, 0.0])[1]}


def build_request(changes: list[str], malfunctions: list[str], weights: list[str], mode: str | None,
                  horizon_s: float, name: str) -> dict:
    """The operator server's what-if request (JSON-able) from the command's options; ValueError
    naming the option and what is allowed."""
    case: dict = {"name": name, "changes": dict(_pair(c, "--change") for c in changes),
                  "malfunctions": [_malfunction(m) for m in malfunctions], "cascade_mpc": {}, "cell_mpc": {}}
    for w in weights:
        key, value = _pair(w, "--weight")
        unit, _, field = key.partition(".")
        if unit not in ("cascade", "cell") or not field:
            raise ValueError(f"--weight {w!r}: use cascade.FIELD=NUMBER or cell.FIELD=NUMBER "
                             "(fields of CascadeMpcConfig / CellMpcConfig, e.g. cascade.move_weight=0.1)")
        case[f"{unit}_mpc"][field] = value
    request = {"horizon_s": horizon_s, "mode": mode, "cases": [case]}
    from pydantic import ValidationError

    from controllers.whatif import WhatIfRequest

    from .whatif import request_error

    try:
        WhatIfRequest.model_validate(request)
    except ValidationError as exc:
        raise ValueError(request_error(exc)) from None
    return request


def read_request(path: Path) -> dict:
    """A what-if request from a JSON file; ValueError naming the file and the field."""
    from pydantic import ValidationError

    from controllers.whatif import WhatIfRequest

    from .whatif import request_error

    try:
        return WhatIfRequest.model_validate_json(path.read_text()).model_dump()
    except OSError as exc:
        raise ValueError(f"--request {path}: cannot read it ({exc.strerror or exc})") from None
    except ValidationError as exc:
        raise ValueError(f"{path}: {request_error(exc)}") from None


async def _session(endpoint: str, security):
    """A session that tolerates a loaded host: 20 s per request, a 10 s keep-alive."""
    from opcua_server.client_security import connect_client

    return await connect_client(endpoint, security, timeout_s=20.0, watchdog_s=10.0, name="pilot-line whatif")


async def _method(client, name: str, *args) -> str:
    from asyncua import ua

    from opcua_server.operator import OPERATOR_NS

    idx = await client.get_namespace_index(OPERATOR_NS)
    return await client.get_node(ua.NodeId("Operator", idx)).call_method(ua.NodeId(f"Operator.{name}", idx), *args)


async def _ask(endpoint: str, security, request: dict, timeout_s: float) -> dict:
    """Submit the request, then poll its result; a session lost while waiting is opened again
    (the run goes on on the server), up to ``RECONNECTS`` times in a row."""
    client = await _session(endpoint, security)
    try:
        answer = await _method(client, "WhatIf", json.dumps(request))
        if not answer.startswith("ok: "):
            raise RuntimeError(answer.removeprefix("error: "))
        jid, started, lost = answer[4:], time.monotonic(), 0
        while True:
            try:
                res = await _method(client, "WhatIfResult", jid)
            except OSError:  # ConnectionError and TimeoutError included
                lost += 1
                if lost > RECONNECTS:
                    raise
                await _quiet_disconnect(client)
                client = await _session(endpoint, security)
                continue
            lost = 0
            if res.startswith("error"):
                raise RuntimeError(res.removeprefix("error: "))
            if res != "pending":
                return json.loads(res)
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"what-if {jid} not finished after {timeout_s:.0f} s (--timeout)")
            await asyncio.sleep(POLL_S)
    finally:
        await _quiet_disconnect(client)


async def _quiet_disconnect(client) -> None:
    try:
        await client.disconnect()
    except Exception:  # a session already lost: nothing to close
        pass


def differences_table(result: dict) -> Table:
    from .whatif import alarm_counts, differences

    table = Table(title=f"what-if from the live estimate ({result['horizon_s'] / 3600:g} h): case − base")
    for col in ("case", "KPI", "unit", "base end", "case end", "Δ end", "Δ mean", "|Δ| max", "MPC linear Δ, steady"):
        table.add_column(col, justify="left" if col in ("case", "KPI", "unit") else "right",
                         no_wrap=col in ("case", "KPI"))  # names whole on a narrow console
    for r in differences(result):
        lin = "" if r["linear"] is None else f"{r['linear']:+.3g}"
        table.add_row(r["case"], r["kpi"], r["unit"], f"{r['base_final']:.4g}", f"{r['case_final']:.4g}",
                      f"{r['delta_final']:+.3g}", f"{r['delta_mean']:+.3g}", f"{r['delta_max_abs']:.3g}", lin)
    counts = alarm_counts(result)
    table.caption = "alarms raised (not standing live at the fork): " + ", ".join(f"{k} {v}" for k, v in counts.items())
    return table


def whatif_cmd(
    change: Annotated[Optional[list[str]], typer.Option(
        "--change", metavar="TAG=VALUE", help="setpoint written at the fork (repeat), engineering units")] = None,
    malfunction: Annotated[Optional[list[str]], typer.Option(
        "--malfunction", metavar="KIND:TARGET:SEVERITY[:ONSET[:RAMP]]",
        help="a fault from the fork (repeat; kinds of twin.malfunctions, e.g. extractant_degradation)")] = None,
    weight: Annotated[Optional[list[str]], typer.Option(
        "--weight", metavar="UNIT.FIELD=VALUE", help="MPC tuning: cascade.* or cell.* (repeat)")] = None,
    mode: Annotated[Optional[str], typer.Option(
        "--mode", help="every loop in manual / advisory / auto for the run (default: the live loop's modes)")] = None,
    horizon: Annotated[str, typer.Option("--horizon", help="plant time to simulate, e.g. 4h, 90min")] = "4h",
    name: Annotated[str, typer.Option("--name", help="the case's name in the outputs")] = "change",
    request_file: Annotated[Optional[Path], typer.Option(
        "--request", help="a JSON request with several cases (fields of controllers.whatif.WhatIfRequest) "
                          "instead of --change / --malfunction / --weight")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="folder for the outputs")] = None,
    timeout: Annotated[str, typer.Option("--timeout", help="wall time to wait for the result")] = "30min",
    endpoint: Annotated[str, typer.Option("--endpoint", envvar="PILOT_OPERATOR_ENDPOINT",
                                          help="operator server of the running loop")] = DEFAULT_OPERATOR_ENDPOINT,
    security_policy: sec.SecurityPolicyOpt = "auto", security_mode: sec.SecurityModeOpt = "auto",
    pki: sec.PkiOpt = sec.DEFAULT_PKI, user: sec.UserOpt = None, password_file: sec.PasswordFileOpt = None,
    allow_plaintext_password: sec.AllowPlaintextOpt = False,
) -> None:
    if mode is not None and mode not in ("manual", "advisory", "auto"):
        fail(f"--mode {mode!r}: use manual, advisory or auto")
    try:
        request = (read_request(request_file) if request_file is not None else
                   build_request(change or [], malfunction or [], weight or [], mode, parse_duration(horizon), name))
    except ValueError as exc:
        fail(str(exc))
    wait_s = duration_or_fail(timeout, fail)
    result = _run(endpoint, (security_policy, security_mode, pki, user, password_file, allow_plaintext_password),
                  request, wait_s)
    from .whatif import write_outputs

    paths = write_outputs(result, out_dir or Path(f"whatif-{time.strftime('%Y%m%dT%H%M%S')}"))
    out = Console()  # the width of the console it runs in (COLUMNS)
    out.print(differences_table(result))
    for case in result["cases"]:
        for note in case["notes"]:
            out.print(f"[dim]{case['name']}: {note}[/dim]")
    out.print(f"wrote {paths['json']}, {paths['csv']}, {paths['png']}")


whatif_cmd.__doc__ = HELP


def _run(endpoint: str, options: tuple, request: dict, timeout_s: float) -> dict:
    """The result, or one red line for every refusal or connection problem."""
    from asyncua import ua

    from opcua_server.operator import refusal_sentence
    from opcua_server.security import SecurityError

    from .cli_opcua import check_endpoint

    check_endpoint(endpoint)
    security = sec.client_security_or_fail(*options)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(_ask(endpoint, security, request, timeout_s))
    except SecurityError as exc:
        fail(str(exc))
    except RuntimeError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"no running loop's operator server at {endpoint}: {exc or type(exc).__name__}")
    except ua.UaStatusCodeError as exc:
        fail(f"{endpoint}: {refusal_sentence('WhatIf', exc.code, security.username)}")
