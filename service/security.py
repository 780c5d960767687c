"""Response headers that keep browsers from misusing the service's answers, and the page's Content-Security-Policy.

Every response says ``nosniff`` (a JSON error is never run as a script), may not be framed (clickjacking), and
sends no referrer. Responses that are not HTML get a CSP that allows nothing; the page and the API docs set their
own, which allow exactly their inline ``<script>`` and ``<style>`` blocks (by hash) and same-origin fetches.
"""

import base64
import hashlib
import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NOTHING_ALLOWED = "default-src 'none'; frame-ancestors 'none'"
# Every response's, unless a route sets its own (the page's and the docs' CSP).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": NOTHING_ALLOWED,
}
_INLINE = re.compile(r"<(script|style)(?:\s[^>]*)?>(.*?)</\1>", re.DOTALL | re.IGNORECASE)


def page_policy(html: str, *, style_attributes: bool = False) -> str:
    """A CSP for ``html``: its own inline scripts and styles (by hash), same-origin everything else.
    ``style_attributes``: also allow inline style attributes (Swagger UI sets them)."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _INLINE.findall(html):
        if body.strip():
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            hashes[tag.lower()].append(f"'sha256-{digest}'")
    scripts = " ".join(["'self'", *hashes["script"]])
    styles = " ".join(["'self'", "'unsafe-inline'"] if style_attributes else ["'self'", *hashes["style"]])
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {scripts}",
            f"style-src {styles}",
            "img-src 'self' data: blob:",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ]
    )


class SecurityHeaders:
    """Adds the headers above to every HTTP response (keeping a route's own CSP)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
