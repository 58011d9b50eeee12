"""Bearer-token authentication, decided from the request headers before any of the body is read.

A pure ASGI middleware rather than a FastAPI dependency: dependencies run after the request body has been
parsed, so an unauthenticated client could still make the service read (and spool to disk) a 60 MiB upload
before hearing 401. Here the answer goes out while the body is still unread.

Open without a token: ``/healthz`` (load balancers, container healthchecks), the API description
(``/docs``, ``/redoc``, ``/openapi.json`` and the Swagger UI / ReDoc files under :data:`DOCS_ASSETS`: the
routes and schemas of this open-source service are no secret, and ``/docs`` cannot render without
``/openapi.json``), and the web view's shells: ``/`` and everything under ``/ui/`` (pages and assets that
hold no job data; their script asks the JSON API, with the token, for that). Every other path, unknown
ones included, answers 401 without the token.
"""

from __future__ import annotations

import secrets

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["DOCS_ASSETS", "OPEN_PATHS", "OPEN_PREFIX", "BearerTokenMiddleware", "is_open"]

#: where Swagger UI's and ReDoc's own files are served (under the open prefix)
DOCS_ASSETS = "/ui/docs-assets"
#: paths that answer without a token
OPEN_PATHS = frozenset({"/", "/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
#: every path under it answers without a token: web pages and static files, never job data
OPEN_PREFIX = "/ui/"


def is_open(path: str) -> bool:
    """Whether ``path`` answers without a token (no ``..`` segment can lead out of the open prefix)."""
    return path in OPEN_PATHS or (path.startswith(OPEN_PREFIX) and ".." not in path.split("/"))


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
        if scope["type"] != "http" or self.expected is None or is_open(scope["path"]):
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
