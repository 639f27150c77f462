"""ASGI middleware loaded into vLLM (``--middleware dermvlm.serving.vllm_guard.InternalKeyGuard``).

vLLM's ``--api-key`` leaves ``/invocations``, ``/tokenize``, ``/metrics`` ... open. On the private Unix socket behind
the front door (``proxy``) this guard closes them as well: every path but ``/health`` needs the internal key (the
``VLLM_API_KEY`` that ``VLLMServer`` generates and only the proxy knows), and ``/invocations`` is a 404 always.
It imports nothing from vLLM, so it is cheap to load in vLLM's API process.
"""

from __future__ import annotations

import hmac
import json
import os
from typing import Any

KEY_ENV = "VLLM_API_KEY"


class InternalKeyGuard:
    """Refuse every request without ``Authorization: Bearer $VLLM_API_KEY`` except ``GET /health``."""

    def __init__(self, app: Any):
        self.app = app
        key = os.environ.get(KEY_ENV)
        self.key = key.encode() if key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or self.key is None:
            return await self.app(scope, receive, send)
        path = scope.get("path", "").rstrip("/").lower()
        if path == "/health":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if path.endswith("/invocations") or scheme.lower() != b"bearer" or not hmac.compare_digest(token, self.key):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            status = 404 if path.endswith("/invocations") else 401
            body = json.dumps({"error": {"message": "not found" if status == 404 else "unauthorized",
                                         "type": "NotFoundError" if status == 404 else "AuthenticationError",
                                         "param": None, "code": status}}).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        return await self.app(scope, receive, send)
