"""``pilot alarms list|ack|shelve|unshelve|mode|shelve-limit``: the operator's actions on the
running ``pilot run``, through its operator server, as the logged-in user. Alarms are read and
acted on through the server's OPC UA Alarms & Conditions, as any A&C client does (ConditionRefresh,
Acknowledge, TimedShelve / Unshelve); loop modes and the shelve limit through the Operator object.

The connection (endpoint, security, user) is given once, before the action, and is the same for
every action: ``pilot alarms --user olga ack CELL1.TEMP.HI``; usually it comes from the
environment (PILOT_OPERATOR_ENDPOINT, PILOT_OPCUA_USER, PILOT_OPCUA_PASSWORD or
PILOT_OPCUA_PASSWORD_FILE, PILOT_OPCUA_PKI). See docs/alarms.md and docs/security.md."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from opcua_server.operator import DEFAULT_OPERATOR_ENDPOINT

from . import cli_security as sec
from .cli_common import fail
from .durations import duration_or_fail

out = Console()
alarms_app = typer.Typer(
    help="Acknowledge, shelve and list the alarms of a running `pilot run`, as the logged-in user.\n\n"
         "Connection options go before the action: `pilot alarms --user olga ack CELL1.TEMP.HI` "
         "(password from PILOT_OPCUA_PASSWORD or --password-file). Viewers list; operators "
         "acknowledge and shelve; engineers change loop modes and the shelve limit.",
    no_args_is_help=True)


def ua_code(name: str) -> int:
    from asyncua import ua

    return getattr(ua.StatusCodes, name)


@dataclass(frozen=True)
class _Console:
    """The connection options of the group; checked when an action runs (so `ACTION --help` works
    without them)."""

    endpoint: str
    options: tuple  # the arguments of sec.client_security_or_fail

    def call(self, method: str, *args) -> str:
        """Call ``method`` of the operator object; one red line for every refusal or connection problem."""
        from opcua_server.operator import call_operator

        answer = self._run(method, lambda endpoint, security: call_operator(endpoint, security, method, *args))
        if answer.startswith("error"):
            fail(answer[len("error: "):])
        return answer

    def conditions(self, what: str, action):
        """Run ``action(client)`` in a session with the operator server, through its Alarms &
        Conditions; ``what``: the method named in a refusal (Acknowledge, Shelve, ...)."""
        from opcua_server.client_security import connect_client

        async def run(endpoint, security):
            client = await connect_client(endpoint, security, name="pilot-line alarms")
            try:
                return await action(client)
            finally:
                await client.disconnect()

        return self._run(what, run)

    def _run(self, what: str, session):
        from asyncua import ua

        from opcua_server.operator import refusal_sentence
        from opcua_server.security import SecurityError

        from .cli_opcua import check_endpoint

        check_endpoint(self.endpoint)
        security = sec.client_security_or_fail(*self.options)
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # every problem ends in the one line below
        try:
            return asyncio.run(session(self.endpoint, security))
        except SecurityError as exc:
            fail(str(exc))
        except KeyError as exc:
            fail(str(exc.args[0]))
        except OSError as exc:  # TimeoutError included
            fail(f"no running `pilot run` operator server at {self.endpoint}: {exc or type(exc).__name__}")
        except ua.UaStatusCodeError as exc:
            fail(f"{self.endpoint}: {REFUSALS.get(exc.code) or refusal_sentence(what, exc.code, security.username)}")


REFUSALS = {  # the conditions' refusals in words (the role refusal is refusal_sentence's)
    ua_code("BadConditionBranchAlreadyAcked"): "the alarm is acknowledged already",
    ua_code("BadConditionNotShelved"): "the alarm is not shelved",
    ua_code("BadShelvingTimeOutOfRange"): "shelving that long is not allowed: at most alarms.max_shelve_s "
                                          "(an engineer changes it with `pilot alarms shelve-limit`)",
    ua_code("BadEventIdUnknown"): "the alarm changed meanwhile: list and try again",
}


@alarms_app.callback()
def connection(
    ctx: typer.Context,
    endpoint: Annotated[str, typer.Option(
        "--endpoint", envvar="PILOT_OPERATOR_ENDPOINT",
        help="operator server of the running `pilot run`")] = DEFAULT_OPERATOR_ENDPOINT,
    security_policy: sec.SecurityPolicyOpt = "auto", security_mode: sec.SecurityModeOpt = "auto",
    pki: sec.PkiOpt = sec.DEFAULT_PKI, user: sec.UserOpt = None, password_file: sec.PasswordFileOpt = None,
    allow_plaintext_password: sec.AllowPlaintextOpt = False,
) -> None:
    """Log in to the operator server of a running `pilot run`."""
    ctx.obj = _Console(endpoint, (security_policy, security_mode, pki, user, password_file, allow_plaintext_password))


def iso_local(t: float | None) -> str:
    """Plant time (Unix s) as ISO 8601 local time to the second; ``-`` when there is none."""
    if t is None:
        return "-"
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def listing_json(alarms: list[dict]) -> dict:
    """``pilot alarms list --json``: the summary and the shelved alarms, plant times also as ISO local time."""
    rows = [{**a, "since_iso": iso_local(a.get("since")), "shelved_until_iso": iso_local(a.get("shelved_until"))
             if a.get("shelved_until") is not None else None} for a in alarms]
    return {"alarms": [a for a in rows if a["state"] != "shelved"], "shelved": [a for a in rows if a["state"] == "shelved"]}


def _num(x: float | None, unit: str = "") -> str:
    return "bad" if x is None else f"{x:.4g} {unit}".rstrip()


def listing_tables(listing: dict) -> list[Table]:
    """The summary table and, when any, the shelved table (ids never truncated)."""
    summary = Table(title=f"{len(listing['alarms'])} alarms")
    for col, opts in (("id", {"no_wrap": True}), ("priority", {}), ("state", {}), ("description", {}),
                      ("value / limit", {}), ("since", {"no_wrap": True})):
        summary.add_column(col, **opts)
    for a in listing["alarms"]:
        limit = "" if a.get("limit") is None else f" / {_num(a['limit'], a.get('eng_unit', ''))}"
        summary.add_row(a["id"], f"{a['priority']} {a['priority_name']}", a["state"], a["description"],
                        _num(a["value"], a.get("eng_unit", "")) + limit, a["since_iso"])
    tables = [summary]
    if listing["shelved"]:
        shelved = Table(title=f"{len(listing['shelved'])} shelved")
        for col, opts in (("id", {"no_wrap": True}), ("priority", {}), ("description", {}),
                          ("until", {"no_wrap": True})):
            shelved.add_column(col, **opts)
        for a in listing["shelved"]:
            shelved.add_row(a["id"], f"{a['priority']} {a['priority_name']}", a["description"], a["shelved_until_iso"])
        tables.append(shelved)
    return tables


@alarms_app.command("list")
def alarms_list(ctx: typer.Context,
                as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """The alarm summary (unacknowledged and acknowledged active, returned-to-normal unacknowledged)
    and the shelved alarms with their expiry; times are plant time in ISO local time. Read as any
    Alarms & Conditions client does: the retained conditions after a ConditionRefresh."""
    from opcua_server.alarm_client import standing

    listing = listing_json(ctx.obj.conditions("ConditionRefresh", standing))
    if as_json:
        out.print_json(data=listing)
        return
    for table in listing_tables(listing):
        out.print(table)


@alarms_app.command("ack")
def alarms_ack(ctx: typer.Context,
               alarm_id: Annotated[str, typer.Argument(help="alarm id, e.g. CELL1.TEMP.HI, or 'all'")],
               comment: Annotated[str, typer.Option(help="a comment journalled with the acknowledgement")] = ""
               ) -> None:
    """Acknowledge an alarm (or every unacknowledged one) through its condition; operator role."""
    from opcua_server.alarm_client import acknowledge

    ids = None if alarm_id == "all" else [alarm_id]
    done = ctx.obj.conditions("Acknowledge", lambda client: acknowledge(client, ids, comment))
    if ids is not None and not done:
        out.print(f"ok: {alarm_id} has nothing to acknowledge")
    else:
        out.print(f"ok: acknowledged {len(done)} alarm(s)" + (f": {', '.join(done)}" if done else ""))


@alarms_app.command("shelve")
def alarms_shelve(ctx: typer.Context,
                  alarm_id: Annotated[str, typer.Argument(help="alarm id")],
                  duration: Annotated[str, typer.Option(help="shelve for (30min, 2h); at most alarms.max_shelve_s")]
                  = "1h") -> None:
    """Shelve an alarm until the duration expires (plant time), by its condition's TimedShelve;
    operator role."""
    from opcua_server.alarm_client import shelve

    seconds = float(duration_or_fail(duration, fail))
    ctx.obj.conditions("Shelve", lambda client: shelve(client, alarm_id, seconds))
    out.print(f"ok: {alarm_id} shelved for {duration}")


@alarms_app.command("unshelve")
def alarms_unshelve(ctx: typer.Context, alarm_id: Annotated[str, typer.Argument(help="alarm id")]) -> None:
    """Return a shelved alarm to service (its condition's Unshelve); operator role."""
    from opcua_server.alarm_client import shelve

    ctx.obj.conditions("Unshelve", lambda client: shelve(client, alarm_id, None))
    out.print(f"ok: {alarm_id} unshelved")


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
