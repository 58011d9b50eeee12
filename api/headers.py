"""Response headers every page gets: a Content-Security-Policy that keeps the browser on this host.

The web view and the offline API docs load everything from this server; the policy makes the browser refuse
anything else before a request leaves it (ReDoc's bundle, for one, asks ``cdn.redoc.ly`` for its logo).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: images may be inline (``data:``, ``blob:``: figures and downloads); every fetch stays on this host
CONTENT_SECURITY_POLICY = "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'"


class SecurityHeadersMiddleware:
    """Pure ASGI middleware: adds :data:`CONTENT_SECURITY_POLICY` to every HTML response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if content_type.startswith(b"text/html"):
                    headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_policy)
