"""Users and roles of every OPC UA server the project runs.

Users come from the environment, never from the plant YAML: ``PILOT_OPCUA_USERS`` holds entries
``name:role:password`` separated by ``;`` or newlines, and ``PILOT_OPCUA_SECRETS`` may name a file
with one such entry per line (``#`` comments). Roles: viewer, operator, engineer. Passwords are kept
only as salted PBKDF2 hashes in memory and never logged. Every password must have at least
``PILOT_OPCUA_MIN_PASSWORD_LENGTH`` characters (default 12), checked when the users are loaded.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from asyncua import ua
from asyncua.crypto.permission_rules import (
    USER_TYPES,
    PermissionRuleset,
    User,
    UserRole,
)

from .security import SecurityError
from .tagmap import Role

log = logging.getLogger(__name__)

USERS_ENV = "PILOT_OPCUA_USERS"
SECRETS_ENV = "PILOT_OPCUA_SECRETS"
MIN_PASSWORD_ENV = "PILOT_OPCUA_MIN_PASSWORD_LENGTH"
MIN_PASSWORD_LENGTH = 12


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 20_000)


def user_entries(text: str) -> Iterator[tuple[int, tuple[str, str, str] | None]]:
    """(entry number, (name, role, password)) of a user store's text: entries separated by ``;`` or
    newlines, blank ones and ``#`` comments skipped; ``None`` for an entry not of that form."""
    for n, raw in enumerate(re.split(r"[;\n]", text), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            parts = line.split(":", 2)
            yield n, (tuple(p.strip() for p in parts) if len(parts) == 3 else None)


class UserDirectory:
    """Username -> (salted hash, role). Built from the environment; never holds plain passwords."""

    def __init__(self) -> None:
        self._users: dict[str, tuple[bytes, bytes, Role]] = {}

    def add(self, name: str, password: str, role: Role | str, *, min_length: int = MIN_PASSWORD_LENGTH) -> None:
        if not name or not password:
            raise SecurityError("a user needs a name and a non-empty password")
        role = Role.parse(role) if isinstance(role, str) else role
        if len(password) < min_length:
            raise SecurityError(f"the password is shorter than {min_length} characters ({MIN_PASSWORD_ENV})")
        salt = os.urandom(16)
        self._users[name] = (salt, _hash(password, salt), role)

    def __len__(self) -> int:
        return len(self._users)

    def with_user(self, name: str, password: str, role: Role | str) -> UserDirectory:
        """A copy of this directory with one more user (an in-process client's own login)."""
        out = UserDirectory()
        out._users = dict(self._users)
        out.add(name, password, role)
        return out

    def names(self) -> list[str]:
        return sorted(self._users)

    def role_of(self, name: str | None) -> Role:
        if name is None or name not in self._users:
            return Role.ANONYMOUS
        return self._users[name][2]

    def authenticate(self, name: str, password: str | bytes | None) -> Role | None:
        entry = self._users.get(name)
        if entry is None or password is None:
            return None
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        salt, digest, role = entry
        return role if hmac.compare_digest(digest, _hash(password, salt)) else None

    @classmethod
    def parse(cls, text: str, source: str, min_length: int = MIN_PASSWORD_LENGTH) -> UserDirectory:
        users = cls()
        for n, parts in user_entries(text):
            if parts is None:
                raise SecurityError(f"{source}, entry {n}: expected name:role:password")
            name, role, password = parts
            try:
                users.add(name, password, role, min_length=min_length)
            except (ValueError, SecurityError) as exc:
                raise SecurityError(f"{source}, entry {n} (user {name!r}): {exc}") from None
        return users

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UserDirectory:
        env = os.environ if environ is None else environ
        users, min_length = cls(), min_password_length(env)
        if env.get(USERS_ENV):
            users._users.update(cls.parse(env[USERS_ENV], USERS_ENV, min_length)._users)
        if env.get(SECRETS_ENV):
            path = Path(env[SECRETS_ENV])
            if not path.is_file():
                raise SecurityError(f"{SECRETS_ENV} names {path}, which is not a file")
            users._users.update(cls.parse(path.read_text(), str(path), min_length)._users)
        return users


def min_password_length(environ: Mapping[str, str]) -> int:
    raw = environ.get(MIN_PASSWORD_ENV, "").strip()
    if not raw:
        return MIN_PASSWORD_LENGTH
    if not raw.isdigit() or not 1 <= int(raw) <= 1024:
        raise SecurityError(f"{MIN_PASSWORD_ENV}={raw!r}: give a whole number of characters, 1..1024 (default "
                            f"{MIN_PASSWORD_LENGTH})")
    return int(raw)


class RoleUserManager:
    """asyncua user manager: anonymous sessions get the Anonymous role, known users a named User
    (never asyncua's Admin, whatever the name); a wrong password is refused at ActivateSession
    (BadUserAccessDenied). Failed logins are counted and logged per burst by the server's session
    layer (``server_sessions.LoginBackoff``), so each one is only a DEBUG line here."""

    def __init__(self, users: UserDirectory):
        self.users = users

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is None:
            return User(role=UserRole.Anonymous)
        role = self.users.authenticate(username, password)
        if role is None:
            log.debug("refused login for user %r (unknown user or wrong password)", username)
            return None
        return User(role=UserRole.User, name=username)


CALL_REQUEST = ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)


class ReadForAllRuleset(PermissionRuleset):
    """Every session may use the ordinary services (read, browse, subscribe, write requests);
    whether a write may change a tag is decided per item by role in the server. Method calls need
    ``call_allowed(user)`` when it is given: refused with BadUserAccessDenied otherwise. The address
    space services (AddNodes, DeleteNodes, AddReferences, DeleteReferences, RegisterServer) are
    refused to every client, whatever its role."""

    def __init__(self, call_allowed=None) -> None:
        self._allowed = {ua.NodeId(i) for i in USER_TYPES}
        self._call_allowed = call_allowed

    def check_validity(self, user, action_type_id, body) -> bool:
        if action_type_id == CALL_REQUEST and self._call_allowed is not None:
            return bool(self._call_allowed(user))
        return action_type_id in self._allowed

