"""Secrets hygiene: refuse the deploy's example secrets, redact credentials from URLs, create files
that hold process data owner-only.

Secrets come from the environment (``PILOT_...``) or from files the environment names; this module
looks at them without ever putting a value into a message:

- ``secret_problems(environ)`` lists every ``PILOT_*`` token or password (``..._TOKEN``,
  ``..._PASSWORD``, their ``..._FILE`` forms, the OPC UA user store ``PILOT_OPCUA_USERS`` and the
  file ``PILOT_OPCUA_SECRETS``) that still holds an example value of ``deploy/env.example``
  (anything containing ``change-me``), and every password of the OPC UA user store shorter than
  ``PILOT_OPCUA_MIN_PASSWORD_LENGTH`` (default 12). Each problem names the variable (and the
  entry and user for the user store), never the value.
- ``redact_url`` / ``redact_text``: ``http://user:***@host/?token=***``: user info and
  token-like query parameters hidden, whatever the scheme.
- ``private_dir`` / ``private_file`` / ``write_private_text``: folders created 0700 and files
  created 0600 at once (``os.open`` with the mode; no window in which another user could open
  them, whatever the umask). An existing file that holds process data is brought to 0600; an
  existing folder keeps its mode (``--out .`` must not change the mode of the working directory).

``python -m pilot.secrets [COMMAND ...]`` is the containers' entry point and a systemd
``ExecStartPre``: it checks the environment (one line per problem on stderr, exit 2), sets the
umask to 077 (every file the command creates is owner-only) and runs COMMAND in its place.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from opcua_server.users import MIN_PASSWORD_ENV as MIN_LENGTH_ENV
from opcua_server.users import MIN_PASSWORD_LENGTH as DEFAULT_MIN_LENGTH
from opcua_server.users import SECRETS_ENV as USERS_FILE_ENV
from opcua_server.users import USERS_ENV, user_entries

EXAMPLE_MARKERS = ("change-me", "changeme", "change_me")
_SECRET_NAME = re.compile(r"^PILOT_\w*(TOKEN|PASSWORD)(_FILE)?$")
_SECRET_QUERY = re.compile(r"(token|password|passwd|pwd|secret|key|auth|signature|^p$)", re.I)
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.I)


class SecretsError(ValueError):
    """A secret in the environment is an example value or breaks the password policy."""


# -- example secrets and the password policy ---------------------------------------------------
def is_example(value: str) -> bool:
    low = value.lower()
    return any(m in low for m in EXAMPLE_MARKERS)


def _example_line(name: str) -> str:
    return f"{name} holds an example value (it contains 'change-me'): set a secret of your own"


def _read_secret_file(name: str, path: str) -> tuple[str | None, str | None]:
    """(content, problem): the file a ``..._FILE`` / ``PILOT_OPCUA_SECRETS`` variable names."""
    try:
        return Path(path).read_text(), None
    except OSError as exc:
        return None, f"{name} names {path}, which cannot be read ({exc.strerror or exc})"


def _user_problems(source: str, text: str, min_length: int) -> list[str]:
    problems = []
    for n, parts in user_entries(text):
        if parts is None:
            continue  # the user store itself says what is wrong with the entry
        user, _role, password = parts
        where = f"{source}, entry {n} (user {user!r})"
        if is_example(password):
            problems.append(f"{where}: the password is an example value (it contains 'change-me'): "
                            "set a password of your own")
        elif len(password) < min_length:
            problems.append(f"{where}: the password is shorter than {min_length} characters "
                            f"({MIN_LENGTH_ENV})")
    return problems


def min_password_length(environ: Mapping[str, str]) -> tuple[int, str | None]:
    raw = environ.get(MIN_LENGTH_ENV, "").strip()
    if not raw:
        return DEFAULT_MIN_LENGTH, None
    if raw.isdigit() and int(raw) >= 1:
        return int(raw), None
    return DEFAULT_MIN_LENGTH, f"{MIN_LENGTH_ENV} must be a whole number >= 1 (got {raw!r})"


def _problems_of(name: str, value: str, min_length: int) -> list[str]:
    """The problems of one variable (none for a variable that holds no secret)."""
    if name in (USERS_ENV, USERS_FILE_ENV):
        if name == USERS_ENV:
            return _user_problems(name, value, min_length)
        text, problem = _read_secret_file(name, value)
        return [problem] if problem else _user_problems(f"{value} ({name})", text, min_length)
    if "_ALLOW_" in name or not _SECRET_NAME.match(name):
        return []
    text, problem = (value, None) if not name.endswith("_FILE") else _read_secret_file(name, value)
    if problem:
        return [problem]
    return [_example_line(name)] if is_example(text) else []


def secret_problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per problem with the secrets of ``environ``; empty when all is well."""
    env = os.environ if environ is None else environ
    min_length, problem = min_password_length(env)
    problems = [problem] if problem else []
    for name in sorted(env):
        if env[name]:
            problems += _problems_of(name, env[name], min_length)
    return problems


def refuse_example_secrets(environ: Mapping[str, str] | None = None) -> None:
    """Raise ``SecretsError`` (every problem, one per line) unless the secrets are fit to run."""
    problems = secret_problems(environ)
    if problems:
        raise SecretsError("\n".join(problems))


def check_secrets_or_fail(fail: Callable[[str], object], environ: Mapping[str, str] | None = None) -> None:
    """For the CLI's start: ``fail(message)`` (which exits) when a secret is refused."""
    try:
        refuse_example_secrets(environ)
    except SecretsError as exc:
        fail(f"refusing to start:\n  {str(exc).replace(chr(10), chr(10) + '  ')}")


# -- redaction -----------------------------------------------------------------------------
def redact_url(url: str) -> str:
    """``scheme://user:***@host:port/path?token=***``: the password of the user info and every
    token-like query parameter (token, password, key, auth, ``p`` of InfluxDB 1.x) hidden."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return "<url not shown>"
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (``redact_url``)."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def redacted_repr(obj) -> str:
    """A dataclass's ``repr`` with every URL in its fields redacted (for settings objects;
    fields declared ``repr=False`` stay out, as in the generated ``repr``)."""
    from dataclasses import fields

    shown = (f"{f.name}={redact_text(repr(getattr(obj, f.name)))}" for f in fields(obj) if f.repr)
    return f"{type(obj).__name__}({', '.join(shown)})"


# -- owner-only files -----------------------------------------------------------------------
def private_dir(path: Path | str) -> Path:
    """Create ``path`` (and missing parents) with mode 0700; an existing folder is left as it is."""
    path = Path(path)
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
    return path


def private_file(path: Path | str) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist (for files that others, such as
    SQLite, open afterwards); an existing file is brought to 0600."""
    path = Path(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        os.chmod(path, 0o600)
    return path


def write_private_text(path: Path | str, text: str) -> Path:
    """Write ``text`` to a file created 0600 at once (an existing file is truncated and brought
    to 0600)."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point of the containers: check the secrets, then ``exec`` the command (if any)."""
    args = sys.argv[1:] if argv is None else argv
    problems = secret_problems()
    if problems:
        sys.stderr.write("".join(f"error: refusing to start: {p}\n" for p in problems))
        return 2
    if args:
        os.umask(0o077)
        os.execvp(args[0], args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
