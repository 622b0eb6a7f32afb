"""``pilot alarms list|ack|shelve|unshelve|mode|shelve-limit``: the operator's actions on the
running ``pilot run``, through its operator server, as the logged-in user.

The connection (endpoint, security, user) is given once, before the action, and is the same for
every action: ``pilot alarms --user olga ack CELL1.TEMP.HI``; usually it comes from the
environment (PILOT_OPERATOR_ENDPOINT, PILOT_OPCUA_USER, PILOT_OPCUA_PASSWORD or
PILOT_OPCUA_PASSWORD_FILE, PILOT_OPCUA_PKI). See docs/alarms.md and docs/security.md."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from opcua_server.operator import DEFAULT_OPERATOR_ENDPOINT

from .cli_common import fail
from .cli_security import (
    DEFAULT_PKI,
    AllowPlaintextOpt,
    PasswordFileOpt,
    PkiOpt,
    SecurityModeOpt,
    SecurityPolicyOpt,
    UserOpt,
    client_security_or_fail,
)
from .durations import duration_or_fail

out = Console()
alarms_app = typer.Typer(
    help="Acknowledge, shelve and list the alarms of a running `pilot run`, as the logged-in user.\n\n"
         "Connection options go before the action: `pilot alarms --user olga ack CELL1.TEMP.HI` "
         "(password from PILOT_OPCUA_PASSWORD or --password-file). Viewers list; operators "
         "acknowledge and shelve; engineers change loop modes and the shelve limit.",
    no_args_is_help=True)


@dataclass(frozen=True)
class _Console:
    """The connection options of the group; checked when an action runs (so `ACTION --help` works
    without them)."""

    endpoint: str
    options: tuple  # the arguments of client_security_or_fail

    def call(self, method: str, *args) -> str:
        """Call ``method`` on the operator server; one red line for every refusal or connection problem."""
        from asyncua import ua

        from opcua_server.operator import call_operator, refusal_sentence
        from opcua_server.security import SecurityError

        from .cli_opcua import check_endpoint

        check_endpoint(self.endpoint)
        security = client_security_or_fail(*self.options)
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # every problem ends in the one line below
        try:
            answer = asyncio.run(call_operator(self.endpoint, security, method, *args))
        except SecurityError as exc:
            fail(str(exc))
        except OSError as exc:  # TimeoutError included
            fail(f"no running `pilot run` operator server at {self.endpoint}: {exc or type(exc).__name__}")
        except ua.UaStatusCodeError as exc:
            fail(f"{self.endpoint}: {refusal_sentence(method, exc.code, security.username)}")
        if answer.startswith("error"):
            fail(answer[len("error: "):])
        return answer


@alarms_app.callback()
def connection(
    ctx: typer.Context,
    endpoint: Annotated[str, typer.Option(
        "--endpoint", envvar="PILOT_OPERATOR_ENDPOINT",
        help="operator server of the running `pilot run`")] = DEFAULT_OPERATOR_ENDPOINT,
    security_policy: SecurityPolicyOpt = "auto", security_mode: SecurityModeOpt = "auto",
    pki: PkiOpt = DEFAULT_PKI, user: UserOpt = None, password_file: PasswordFileOpt = None,
    allow_plaintext_password: AllowPlaintextOpt = False,
) -> None:
    """Log in to the operator server of a running `pilot run`."""
    ctx.obj = _Console(endpoint, (security_policy, security_mode, pki, user, password_file, allow_plaintext_password))


@alarms_app.command("list")
def alarms_list(ctx: typer.Context,
                as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """The alarm summary: unacknowledged and acknowledged active alarms, returned-to-normal unacknowledged."""
    alarms = json.loads(ctx.obj.call("List"))
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
def alarms_ack(ctx: typer.Context,
               alarm_id: Annotated[str, typer.Argument(help="alarm id, e.g. CELL1.TEMP.HI, or 'all'")]) -> None:
    """Acknowledge an alarm (or all of them); operator role."""
    out.print(ctx.obj.call("AcknowledgeAll") if alarm_id == "all" else ctx.obj.call("Acknowledge", alarm_id))


@alarms_app.command("shelve")
def alarms_shelve(ctx: typer.Context,
                  alarm_id: Annotated[str, typer.Argument(help="alarm id")],
                  duration: Annotated[str, typer.Option(help="shelve for (30min, 2h); at most alarms.max_shelve_s")]
                  = "1h") -> None:
    """Shelve an alarm until the duration expires (plant time); operator role."""
    out.print(ctx.obj.call("Shelve", alarm_id, float(duration_or_fail(duration, fail))))


@alarms_app.command("unshelve")
def alarms_unshelve(ctx: typer.Context, alarm_id: Annotated[str, typer.Argument(help="alarm id")]) -> None:
    """Return a shelved alarm to service; operator role."""
    out.print(ctx.obj.call("Unshelve", alarm_id))


@alarms_app.command("mode")
def alarms_mode(ctx: typer.Context,
                loop: Annotated[str, typer.Argument(help="loop name (cell1, cascade, ...)")],
                mode: Annotated[str, typer.Argument(help="manual, advisory or auto")]) -> None:
    """Change a loop's mode in the running loop (going to auto is bumpless); engineer role."""
    out.print(ctx.obj.call("SetMode", loop, mode))


@alarms_app.command("shelve-limit")
def alarms_shelve_limit(ctx: typer.Context, duration: Annotated[str, typer.Argument(
        help="longest shelving allowed (4h, 1d; ≤ 7 days)")]) -> None:
    """Set the longest shelving the running loop allows (alarms.max_shelve_s); engineer role."""
    out.print(ctx.obj.call("SetShelveLimit", float(duration_or_fail(duration, fail))))
