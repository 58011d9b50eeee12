"""Bearer-token authentication, decided from the request headers before any of the body is read.

A pure ASGI middleware rather than a FastAPI dependency: dependencies run after the request body has been
parsed, so an unauthenticated client could still make the service read (and spool to disk) a 60 MiB upload
before hearing 401. Here the answer goes out while the body is still unread.

Open without a token: ``/healthz`` (load balancers, container healthchecks) and the API description
(``/docs``, ``/redoc``, ``/openapi.json``: the routes and schemas of this open-source service are no
secret, and ``/docs`` cannot render without ``/openapi.json``). Every other path, unknown ones included,
answers 401 without the token.
"""

from __future__ import annotations

import secrets

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["OPEN_PATHS", "BearerTokenMiddleware"]

#: paths that answer without a token
OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def bearer_token(scope: Scope) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive), else None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


class BearerTokenMiddleware:
    """401 (``WWW-Authenticate: Bearer``) for every HTTP request outside :data:`OPEN_PATHS` that does not
    carry ``token``; with ``token=None`` every request passes.

    CORS preflights (``OPTIONS`` with ``Access-Control-Request-Method``) carry no credentials by design;
    the CORS middleware, outside this one, answers them before they get here.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = None if token is None else token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.expected is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = bearer_token(scope)
        if given is not None and secrets.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        # ``receive`` is never called: the server has not read a byte of the body, and it closes the
        # connection after this answer rather than drain an upload nobody asked for
        refusal = JSONResponse(
            {"detail": "missing or invalid bearer token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )
        await refusal(scope, receive, send)
