"""``pilot train instructor URL status|freeze|resume|speed|snapshot|restore|backtrack|inject|clear|end``:
the instructor's console of a served training session (``pilot train serve``), through the
``Instructor`` object of its simulated PLC (opcua_server/instructor.py), as the logged-in user.

The connection (security options and user, then the URL) comes first and is the same for every
verb: ``pilot train instructor --user ines opc.tcp://sim:4840 freeze`` (password from
PILOT_OPCUA_PASSWORD or --password-file; the options also from the environment, PILOT_OPCUA_USER
...). ``status`` is readable by every user; the other verbs need the engineer role.
Every refusal ends in one red line (a wrong fault kind lists the kinds, a severity out of range
gives the range, a refused call names the role it needs) and exit code 2. See docs/training.md.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console

from . import cli_security as sec
from .cli_common import fail
from .durations import duration_or_fail

out, err = Console(), Console(stderr=True)
REBUILD_WITHIN_S = 900.0
instructor_app = typer.Typer(
    help="The instructor's console of a served training session (`pilot train serve`): freeze, "
         "speed, snapshots, faults, end.\n\nThe connection options, then the URL, go before the verb: "
         "`pilot train instructor --user ines opc.tcp://HOST:4840 inject pump_trip@SX.ORG.FLOW_SP`. "
         "status: every user; the other verbs: the engineer role.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
_STATE = ("SessionId", "Scenario", "SessionTime", "Speed", "Frozen", "Faults", "SnapshotFolder")
_OPTIONAL = ("Score", "OpenObjectives")  # offered by a scored served session


@dataclass(frozen=True)
class _Console:
    """The served session's URL and the arguments of ``sec.client_security_or_fail``."""

    url: str
    options: tuple

    def run(self, verb: str, action, answer_within_s: float = 10.0):
        """``action(client, instructor_node, ns)`` on a connected client, each request answered within
        ``answer_within_s``; one red line for every problem."""
        from asyncua import ua

        from opcua_server.client_security import connect_client
        from opcua_server.security import SecurityError

        from .cli_opcua import check_endpoint

        check_endpoint(self.url)
        security = sec.client_security_or_fail(*self.options)
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # every problem ends in the one line below

        async def session():
            client = await connect_client(self.url, security, name="pilot-line instructor")
            client.uaclient.protocol.timeout = answer_within_s  # connecting keeps its short timeout
            try:
                node = await _instructor_node(client)
                if node is None:
                    return None
                return await action(client, node, node.nodeid.NamespaceIndex)
            finally:
                await client.disconnect()
        try:
            result = asyncio.run(session())
        except SecurityError as exc:
            fail(str(exc))
        except TimeoutError:
            fail(f"{self.url} did not answer {verb} within {answer_within_s:g} s")
        except OSError as exc:
            fail(f"no training server at {self.url}: {exc.strerror or exc or type(exc).__name__}")
        except ua.UaStatusCodeError as exc:
            fail(f"{self.url}: {refusal(verb, exc.code, security.username)}")
        if result is None:
            fail(f"{self.url} serves no training session (no Instructor object): start one with `pilot train serve`")
        return result

    def call(self, verb: str, method: str, *args) -> str:
        """Call ``Instructor.<method>``; its ``ok ...`` answer without the ``ok``, or one red line.
        Restore, Backtrack and Clear rebuild the session by replaying its journal at the twin's
        speed: they are given up to ``REBUILD_WITHIN_S`` to answer."""
        from asyncua import ua

        async def action(client, node, ns):
            return await node.call_method(ua.NodeId(f"Instructor.{method}", ns), *args)
        rebuild = method in ("Restore", "Backtrack", "Clear")
        if rebuild:
            err.print(f"{verb}: the server rebuilds the session by replaying its journal (as long as the "
                      "twin takes to run it as fast as it can)", highlight=False, soft_wrap=True)
        answer = self.run(verb, action, REBUILD_WITHIN_S if rebuild else 10.0)
        if answer.startswith("error"):
            fail(answer.removeprefix("error:").strip())
        return answer.removeprefix("ok").strip()


async def _instructor_node(client):
    for child in await client.nodes.objects.get_children():
        if (await child.read_browse_name()).Name == "Instructor":
            return child
    return None


def refusal(verb: str, code: int, user: str | None) -> str:
    """The instructor's sentence for a call the training server refused with ``code``."""
    from asyncua import ua

    name = ua.StatusCode(code).name
    if code == ua.StatusCodes.BadUserAccessDenied:
        who = f"user {user}" if user else "an anonymous session"
        return f"{verb} needs the engineer role, which {who} does not have ({name}); log in with --user"
    return f"the training server refused {verb}: {name}"


async def read_state(client, node, ns) -> dict:
    """The Instructor variables; the optional ones only when the session offers them."""
    from asyncua import ua

    nodes = [client.get_node(ua.NodeId(f"Instructor.{n}", ns)) for n in _STATE]
    state = dict(zip(_STATE, await client.read_values(nodes)))
    for name in _OPTIONAL:
        try:
            state[name] = await client.get_node(ua.NodeId(f"Instructor.{name}", ns)).read_value()
        except ua.UaStatusCodeError:  # BadNodeIdUnknown: not offered by this server
            pass
    return state


def status_lines(state: dict) -> list[str]:
    """What ``status`` prints, one fact a line."""
    from opcua_server.instructor_faults import mmss

    speed = state["Speed"]
    pace = "frozen" if state["Frozen"] else ("running as fast as possible" if not speed else f"running at {speed:g}x")
    lines = [f"session {state['SessionId']}, scenario {state['Scenario'] or '(not named)'}",
             f"session time {mmss(state['SessionTime'])} (min:s), {pace}",
             "faults: none" if not state["Faults"] else "faults:", *(f"  {f}" for f in state["Faults"])]
    if state.get("Score") is not None:
        lines.append(f"score {state['Score']:.0f}/100")
    if "OpenObjectives" in state:
        objectives = list(state["OpenObjectives"] or [])
        lines += ["open objectives: none"] if not objectives else ["open objectives:", *(f"  {o}" for o in objectives)]
    lines.append(f"snapshot folder on the server: {state['SnapshotFolder']}")
    return lines


@instructor_app.callback()
def connect(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="opc.tcp://HOST:PORT of the served session (`pilot train serve`)")],
    security_policy: sec.SecurityPolicyOpt = "auto", security_mode: sec.SecurityModeOpt = "auto",
    pki: sec.PkiOpt = sec.DEFAULT_PKI, user: sec.UserOpt = None, password_file: sec.PasswordFileOpt = None,
    allow_plaintext_password: sec.AllowPlaintextOpt = False,
) -> None:
    """Log in to a served training session."""
    ctx.obj = _Console(url, (security_policy, security_mode, pki, user, password_file, allow_plaintext_password))


@instructor_app.command("status")
def status_cmd(ctx: typer.Context) -> None:
    """Session time, speed, frozen or not, faults, scenario (and score and open objectives when offered)."""
    for line in status_lines(ctx.obj.run("status", read_state)):
        out.print(line, highlight=False, soft_wrap=True)


@instructor_app.command("freeze")
def freeze_cmd(ctx: typer.Context) -> None:
    """Stop plant time (the PLC keeps answering reads and writes)."""
    out.print(ctx.obj.call("freeze", "Freeze"), highlight=False, soft_wrap=True)


@instructor_app.command("resume")
def resume_cmd(ctx: typer.Context) -> None:
    """Restart plant time."""
    out.print(ctx.obj.call("resume", "Resume") or "resumed", highlight=False, soft_wrap=True)


def _speed(text: str) -> float:
    if text.strip().lower() == "max":
        return 0.0
    try:
        v = float(text.strip().rstrip("x"))
    except ValueError:
        v = -1.0
    if not 0.5 <= v <= 100:
        fail(f"speed must be 0.5..100 (plant seconds per wall second) or max; got {text!r}")
    return v


@instructor_app.command("speed")
def speed_cmd(ctx: typer.Context,
              speed: Annotated[str, typer.Argument(help="plant seconds per wall second, 0.5..100, or max")]) -> None:
    """Change the pace of plant time."""
    from asyncua import ua

    v = _speed(speed)
    ctx.obj.call("speed", "SetSpeed", ua.Variant(v, ua.VariantType.Double))
    out.print(f"speed {'max' if v == 0 else f'{v:g}x'}")


_ON_SERVER = "a file name in the server's snapshot folder (on the server's disk, shown by status)"


@instructor_app.command("snapshot")
def snapshot_cmd(ctx: typer.Context, name: Annotated[str, typer.Argument(help=_ON_SERVER)]) -> None:
    """Save the session now. The server writes the file, in its own snapshot folder."""
    out.print(ctx.obj.call("snapshot", "Snapshot", name), highlight=False, soft_wrap=True)


@instructor_app.command("restore")
def restore_cmd(ctx: typer.Context, name: Annotated[str, typer.Argument(help=_ON_SERVER)]) -> None:
    """Rebuild a saved session and go on from it. The server reads the file, from its own snapshot folder."""
    out.print(ctx.obj.call("restore", "Restore", name), highlight=False, soft_wrap=True)


@instructor_app.command("backtrack")
def backtrack_cmd(ctx: typer.Context, k: Annotated[int, typer.Argument(
        help="the k-th newest automatic snapshot (1: the latest)")] = 1) -> None:
    """Go back to an automatic snapshot of the session."""
    from asyncua import ua

    answer = ctx.obj.call("backtrack", "Backtrack", ua.Variant(k, ua.VariantType.Int32))
    out.print(answer, highlight=False, soft_wrap=True)


@instructor_app.command("inject")
def inject_cmd(
    ctx: typer.Context,
    fault: Annotated[str, typer.Argument(
        help="KIND@TARGET, e.g. pump_trip@SX.ORG.FLOW_SP (kinds: `pilot train list`)")],
    severity: Annotated[float, typer.Option(
        help="how bad; its range depends on the kind (twin/malfunctions.py)")] = 1.0,
    ramp: Annotated[str | None, typer.Option(help="plant time to full severity (30s, 5min); default: a step")] = None,
) -> None:
    """Start a fault now."""
    from asyncua import ua

    ramp_s = 0.0 if ramp in (None, "0") else duration_or_fail(ramp, fail)
    out.print(ctx.obj.call("inject", "Inject", fault, ua.Variant(float(severity), ua.VariantType.Double),
                           ua.Variant(float(ramp_s), ua.VariantType.Double)), highlight=False, soft_wrap=True)


@instructor_app.command("clear")
def clear_cmd(ctx: typer.Context, fault: Annotated[str, typer.Argument(
        help="the fault's number in `status`, KIND@TARGET or KIND")]) -> None:
    """Clear a fault: it ramps out from now over its own ramp (one not started yet is dropped)."""
    out.print(ctx.obj.call("clear", "Clear", fault), highlight=False, soft_wrap=True)


@instructor_app.command("end")
def end_cmd(ctx: typer.Context) -> None:
    """End the session (the served PLC stops)."""
    out.print(ctx.obj.call("end", "End"), highlight=False, soft_wrap=True)
