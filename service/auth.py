"""Who is calling: the owner every thread and run is scoped to.

Three modes (``THREADKEEPER_AUTH``): ``none`` (one local owner), ``header`` (an auth proxy in
front sets the user header) and ``jwt`` (``Authorization: Bearer``, owner = ``sub``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt
from starlette.requests import HTTPConnection

from threadkeeper.service.jsonbody import unstorable
from threadkeeper.service.problems import Problem
from threadkeeper.service.settings import Settings

LOCAL_OWNER = "local"
MAX_OWNER_LENGTH = 256


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, kind="unauthenticated", headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class Authenticator:
    settings: Settings

    def owner(self, conn: HTTPConnection) -> str:
        mode = self.settings.auth
        if mode == "none":
            return LOCAL_OWNER
        if mode == "header":
            return self._from_header(conn)
        return self._from_jwt(conn)

    def _from_header(self, conn: HTTPConnection) -> str:
        value = conn.headers.get(self.settings.auth_header, "").strip()
        if not value:
            raise _unauthorized(f"missing {self.settings.auth_header} header")
        return _checked(value)

    def _from_jwt(self, conn: HTTPConnection) -> str:
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("missing bearer token")
        s = self.settings
        key = s.jwt_public_key or s.jwt_secret or ""
        algorithms = ["RS256", "ES256"] if s.jwt_public_key else ["HS256"]
        try:
            claims = jwt.decode(
                token.strip(),
                key,
                algorithms=algorithms,
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                options={"require": ["sub", "exp"], "verify_aud": s.jwt_audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"invalid token: {exc}") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _unauthorized("token has no subject")
        return _checked(sub)


def _checked(owner: str) -> str:
    if len(owner) > MAX_OWNER_LENGTH:
        raise _unauthorized("identity too long")
    what = unstorable(owner)
    if what is not None:
        raise _unauthorized(f"identity contains {what}")
    return owner
