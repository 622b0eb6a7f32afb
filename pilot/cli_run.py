"""``pilot run``: the control loop live over OPC UA against the PLCs (or ``pilot plc-sim``), with
its operator server. See docs/control_loop.md and docs/security.md."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from opcua_server.operator import DEFAULT_OPERATOR_ENDPOINT

from . import cli_security as sec
from .cli_common import fail as _fail
from .durations import duration_or_fail

err = Console(stderr=True)
out = Console()
_OPERATOR_PANEL = "Operator server (pilot alarms, HMI)"


PLC_HELP = ("a PLC's endpoint: NAME=URL replaces the endpoint of the config's PLC NAME (repeat it); "
            "one URL alone: every tag on that one server. Default: PILOT_OPCUA_ENDPOINTS (NAME=URL,...), "
            "else PILOT_OPCUA_ENDPOINT (one URL), else the config's PLCs")


def parse_plcs(values: list[str]) -> str | dict[str, str] | None:
    """``--plc`` values as ``run_live`` takes them: one bare URL, or NAME=URL overrides (ValueError
    saying which form is expected otherwise)."""
    values = [v.strip() for v in values if v.strip()]
    if not values:
        return None
    named = [v for v in values if "=" in v.split("://", 1)[0]]
    if not named:
        if len(values) > 1:
            raise ValueError("give one URL (every tag on that server) or NAME=URL for each PLC, not several URLs")
        return values[0]
    if len(named) != len(values):
        raise ValueError("--plc: either one URL or NAME=URL for each PLC, not both")
    out: dict[str, str] = {}
    for v in named:
        name, url = v.split("=", 1)
        if name in out:
            raise ValueError(f"--plc: PLC {name} given twice")
        out[name.strip()] = url.strip()
    return out


def _plcs_or_fail(values: list[str] | None, config) -> str | dict[str, str] | None:
    import os

    from .cli_opcua import check_endpoint

    if not values:
        env = os.environ.get("PILOT_OPCUA_ENDPOINTS", "")
        values = env.split(",") if env.strip() else [os.environ.get("PILOT_OPCUA_ENDPOINT", "")]
    try:
        plcs = parse_plcs(values)
    except ValueError as exc:
        _fail(str(exc))
    for url in ([plcs] if isinstance(plcs, str) else list((plcs or {}).values())):
        check_endpoint(url)
    names = [p.name for p in config.opcua.resolved_plcs()]
    unknown = sorted(set(plcs) - set(names)) if isinstance(plcs, dict) else []
    if unknown:
        _fail(f"--plc {unknown[0]}=URL: the config has no PLC {unknown[0]}; its PLCs: {', '.join(names)}")
    return plcs


def run_cmd(
    plc: Annotated[Optional[list[str]], typer.Option("--plc", help=PLC_HELP, show_default=False,
                                                            metavar="URL|NAME=URL")] = None,
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
        "--operator-endpoint", envvar="PILOT_OPERATOR_ENDPOINT", rich_help_panel=_OPERATOR_PANEL,
        help="where to serve acknowledge/shelve methods and the .EST tags ('' to disable)")]
        = DEFAULT_OPERATOR_ENDPOINT,
    security_policy: sec.SecurityPolicyOpt = "auto",
    security_mode: sec.SecurityModeOpt = "auto",
    pki: sec.PkiOpt = sec.DEFAULT_PKI,
    user: sec.UserOpt = None,
    password_file: sec.PasswordFileOpt = None,
    allow_plaintext_password: sec.AllowPlaintextOpt = False,
    operator_security: Annotated[str, typer.Option(
        "--operator-security", envvar="PILOT_OPERATOR_SECURITY", rich_help_panel=_OPERATOR_PANEL,
        help="endpoints of the operator server: comma list of None, Sign, SignAndEncrypt or POLICY:MODE; "
             "secure: every policy with Sign and SignAndEncrypt (its certificate: the --pki folder)")] = "secure",
    anonymous: Annotated[Optional[bool], typer.Option(
        "--anonymous/--no-anonymous", rich_help_panel=_OPERATOR_PANEL, show_default=False,
        help="accept anonymous sessions on the operator server (they only read); default: "
             "PILOT_OPCUA_ANONYMOUS, else only when no users are configured")] = None,
    audit: Annotated[Optional[Path], typer.Option(
        "--audit", envvar="PILOT_AUDIT_JOURNAL", rich_help_panel=_OPERATOR_PANEL, show_default=False,
        help="journal of operator actions (JSON lines, 0600); default: OUT/audit.jsonl, else ./audit.jsonl")]
        = None,
    alarm_state: Annotated[Optional[Path], typer.Option(
        "--alarm-state", envvar="PILOT_ALARM_STATE", show_default=False,
        help="alarm states and journal kept across restarts (SQLite, 0600); default: OUT/alarms.sqlite, else none")]
        = None,
) -> None:
    """Run estimators, MPC, guard and alarms live against PLCs over OPC UA.

    Reads the PLC through the bridge, steps the loop every control period of plant time, writes the
    guarded setpoints (auto loops) and reports every refused write; records process tags,
    estimates, decisions and alarms into the historian. Operators acknowledge and shelve with
    `pilot alarms` while it runs, logged in to the operator server (secured, same users and roles
    as the PLC face); every action, refused ones too, goes into the audit journal. The PLC connection uses the most secure endpoint the PLC offers
    and checks its certificate against the PKI folder's trust list; writes need a user with the
    operator role (--user, the password from PILOT_OPCUA_PASSWORD or --password-file).
    Several PLCs: one session each; an outage holds only the loops whose tags live there and
    raises PLC.<name>.COMM. SIGTERM or Ctrl-C: the tick in progress ends, the historian flushes
    (at most 10 s; the rest waits in the spool), summary.json is written, exit 0.
    """
    from asyncua import ua

    from controllers.guard import LiveWriteForbidden
    from opcua_server.audit import AuditError
    from opcua_server.bridge import LinkDown
    from opcua_server.security import SecurityError

    from .cli_common import load_or_fail
    from .cli_opcua import check_endpoint
    from .live import run_live
    from .live_support import iso
    from .secrets import check_secrets_or_fail

    check_secrets_or_fail(_fail)  # example passwords and tokens, the user store's password policy
    if operator_endpoint:
        check_endpoint(operator_endpoint)
    if mode not in ("manual", "advisory", "auto"):
        _fail(f"--mode must be manual, advisory or auto (got {mode!r})")
    if session not in ("live", "training", "standalone"):
        _fail(f"--session must be live, training or standalone (got {session!r})")
    duration_s = duration_or_fail(duration, _fail)
    security = sec.client_security_or_fail(security_policy, security_mode, pki, user, password_file,
                                       allow_plaintext_password)
    op_security = operator_security_or_fail(operator_security, pki, anonymous) if operator_endpoint else None
    config = load_or_fail(config_path)
    plcs = _plcs_or_fail(plc, config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)  # the bridge reports the link itself

    def show(tick, result) -> None:
        refused = len(result.refused) if result else 0
        err.print(f"{iso(tick.t)}  writes {len(tick.writes)}  advisory {len(tick.advisory)}  held {len(tick.held)}"
                  f"  refused {refused}  alarms {len(tick.active_alarms)}  {tick.latency_s * 1e3:.0f} ms",
                  highlight=False, soft_wrap=True)

    try:
        res = asyncio.run(run_live(config, plcs, mode=mode, duration_s=duration_s, out_dir=out_dir,
                                   session=session, target="auto", bridge_options={"security": security},
                                   operator_endpoint=operator_endpoint or None, operator_security=op_security,
                                   audit_path=audit, alarm_state=alarm_state, on_tick=show,
                                   handle_signals=True))
    except (LiveWriteForbidden, AuditError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:  # pragma: no cover
        return
    except SecurityError as exc:
        _fail(str(exc))
    except OSError as exc:  # TimeoutError included
        _fail(f"cannot reach the PLC: {exc or type(exc).__name__}")
    except LinkDown as exc:
        _fail(str(exc))
    except ua.UaError as exc:  # a status the PLC answered outside the security checks
        code = getattr(exc, "code", None)
        _fail(f"the PLC answered {ua.StatusCode(code).name if code is not None else exc}")
    lat = res.stats["tick_latency_ms"]
    out.print(f"{res.ticks} ticks; {res.stats['writes_accepted']} writes accepted, {len(res.refused)} refused; "
              f"{res.stats['alarms_raised']} alarms raised; tick p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms",
              soft_wrap=True)
    for t, tag, value, reason in res.refused[:20]:
        out.print(f"  refused {iso(t)} {tag} = {value:g}: {reason}", highlight=False, soft_wrap=True)
    for t, tag, value, reason in res.denied:
        out.print(f"  denied {iso(t)} {tag} = {value:g}: held from then on ({reason})", highlight=False, soft_wrap=True)
    for name, st in res.plcs.items():
        out.print(f"  PLC {name}: {'up' if st['up'] else 'DOWN'}, {st['outages']} outage(s), "
                  f"{st['reconnects']} reconnect(s), {len(st['clock_steps'])} clock step(s)", highlight=False, soft_wrap=True)
    h = res.historian
    if h:
        dropped = sum(h.get("dropped", {}).values())
        out.print(f"  historian: {h.get('recorded', 0)} recorded, {h.get('written', 0)} written, "
                  f"{h.get('spooled', 0)} spooled, {h.get('replayed', 0)} replayed, {dropped} dropped, "
                  f"backlog {h.get('backlog', 0)}", highlight=False, soft_wrap=True)
    if res.summary_path:
        out.print(f"summary: {res.summary_path}")


def operator_security_or_fail(spec: str, pki: Path, anonymous: bool | None):
    """The operator server's ``ServerSecurity`` (endpoints of ``spec``; users and PKI as every
    server face has them), or one red line."""
    from opcua_server.security import SecurityError
    from opcua_server.server_security import parse_endpoints, server_security_from_env

    try:
        parse_endpoints(spec)
    except SecurityError as exc:
        _fail(f"--operator-security / PILOT_OPERATOR_SECURITY: {exc}")
    try:
        return server_security_from_env(spec=spec, pki=pki, allow_anonymous=anonymous)
    except SecurityError as exc:
        _fail(str(exc))
