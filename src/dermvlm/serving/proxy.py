"""The front door: a thin async reverse proxy in front of a vLLM server that listens on a private Unix socket.

vLLM's own ``--api-key`` guards only ``/v1``, ``/v2``, ``/inference`` and ``/cohere``; ``/invocations`` (full
completions), ``/tokenize``, ``/detokenize``, ``/metrics``, ``/ping``, ``/version``, ``/docs`` ... stay open. This
proxy is the only thing on the TCP port, so it decides for every route:

- ``GET``/``HEAD /health`` is open (liveness probes); it answers 503 until vLLM is up.
- With an API key, every other method and path needs ``Authorization: Bearer KEY`` (401 otherwise).
- ``/invocations`` (SageMaker's alias of the completion routes) is closed: 404, with or without the key.
- A JSON body that ``media_policy.request_problem`` refuses gets a 400 JSON error saying why; vLLM never sees it.
  Default-deny: content parts other than ``text`` and ``image_url``, media URLs that are not ``data:`` URLs or
  ``http(s)`` URLs on an allowed host (the error names the host and ``--allow-image-domain``), ``n`` over 16 and
  token limits over ``--max-tokens`` (the context length).
- Bounded: a request's headers must arrive within ``HEADER_TIMEOUT_S`` and its body within ``BODY_TIMEOUT_S``
  (slow-trickling clients are cut off, 408), bodies over ``MAX_BODY`` get 413, and an error vLLM answers is passed
  on with its message cut to ``echo.LINE_LIMIT`` characters (a huge value is not echoed whole).
- Everything else is forwarded to vLLM with an internal key only this proxy knows, and the response is streamed
  back unbuffered (SSE chat streaming works). WebSocket routes (``/v1/realtime``) are not forwarded.

Run as ``python -m dermvlm.serving.proxy (--fd N | --port P) --upstream-uds PATH [--allow-image-domain D ...]
[--max-tokens N]``;
the keys come from the environment (``DERMVLM_PROXY_API_KEY``, ``DERMVLM_PROXY_UPSTREAM_KEY``), never from argv.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import posixpath
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx

from dermvlm.echo import clip_line
from dermvlm.serving.media_policy import MediaPolicyError, check_url, normalize_domain, request_problem

API_KEY_ENV = "DERMVLM_PROXY_API_KEY"
UPSTREAM_KEY_ENV = "DERMVLM_PROXY_UPSTREAM_KEY"
OPEN_PATHS = frozenset({"/health"})
CLOSED_PATHS = frozenset({"/invocations"})
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "host", "content-length"})
DROPPED_REQUEST = HOP_BY_HOP | {"authorization", "x-api-key", "expect"}
MAX_BODY = 64 << 20  # 64 MiB: images arrive inline as base64 (the chat page sends at most 1024 px JPEGs)
HEADER_TIMEOUT_S = 15.0  # from connection (or the previous response) to a request's complete headers
BODY_TIMEOUT_S = 120.0  # for a request's whole body
MAX_ERROR_BODY = 4 << 20  # an error answer of vLLM read to cut its message; larger ones pass unread

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _normal_path(path: str) -> str:
    """``//Invocations/`` → ``/invocations``: the form route decisions are made on."""
    p = posixpath.normpath("/" + path.lstrip("/")).lower()
    return "/" if p in ("/", "//") else p.rstrip("/")


class FrontDoor:
    """The ASGI app: authenticate, filter media URLs, forward to ``upstream_uds``."""

    def __init__(self, upstream_uds: str, api_key: str | None, upstream_key: str | None,
                 allowed_domains: frozenset[str], max_tokens: int | None = None):
        self.api_key = api_key.encode() if api_key else None
        self.upstream_key = upstream_key
        self.allowed = allowed_domains
        self.max_tokens = max_tokens
        transport = httpx.AsyncHTTPTransport(uds=upstream_uds, retries=0)
        self.client = httpx.AsyncClient(
            transport=transport, base_url="http://vllm",
            timeout=httpx.Timeout(connect=10.0, read=None, write=None, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _authorized(self, headers: list[tuple[str, str]]) -> bool:
        """Exactly one ``Authorization: Bearer KEY`` header with the key (or no key configured)."""
        if self.api_key is None:
            return True
        values = [v for k, v in headers if k == "authorization"]
        if len(values) != 1:
            return False
        scheme, _, token = values[0].partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("latin-1"), self.api_key)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        path = scope["path"]
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        first = dict(reversed(headers))  # the first value of each header
        route = _normal_path(path)
        if route in OPEN_PATHS and method in ("GET", "HEAD"):
            return await self._forward(scope, receive, send, route, headers, b"", health=True)
        if not self._authorized(headers):
            return await _error(send, 401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                "AuthenticationError", extra={"www-authenticate": "Bearer"})
        if route in CLOSED_PATHS:
            return await _error(send, 404, f"{path} is disabled on this server; use /v1/chat/completions",
                                "NotFoundError")
        if first.get("content-encoding", "identity").lower() not in ("", "identity"):
            return await _error(send, 415, "compressed request bodies are not accepted", "BadRequestError")
        try:
            body = await asyncio.wait_for(_read_body(receive), BODY_TIMEOUT_S)
        except TimeoutError:
            return await _error(send, 408, f"the request body did not arrive within {BODY_TIMEOUT_S:.0f} s",
                                "RequestTimeoutError", extra={"connection": "close"})
        if body is _GONE:
            return None  # the client left before sending its whole request
        if body is None:
            return await _error(send, 413, f"request body over {MAX_BODY >> 20} MiB; send images downscaled "
                                "(e.g. 1024 px JPEG)", "BadRequestError")
        if len([k for k, _ in headers if k == "content-type"]) > 1:
            return await _error(send, 400, "more than one Content-Type header", "BadRequestError")
        problem = self._request_problem(body, first.get("content-type", ""))
        if problem is not None:
            return await _error(send, 400, problem, "BadRequestError")
        await self._forward(scope, receive, send, path, headers, body)

    def _request_problem(self, body: bytes, content_type: str) -> str | None:
        if not body.strip():
            return None
        ctype = content_type.split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            return None  # file uploads (transcription); vLLM fetches no URLs from them
        if ctype == "application/x-www-form-urlencoded":
            pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True)
            refusals = [r for k, v in pairs if (k.lower() == "url" or k.lower().endswith("_url"))
                        and (r := check_url(k, v, self.allowed)) is not None]
        else:
            return request_problem(body, self.allowed, self.max_tokens)
        return refusals[0].message() if refusals else None

    async def _forward(self, scope: Scope, receive: Receive, send: Send, path: str, headers: list[tuple[str, str]],
                       body: bytes, health: bool = False) -> None:
        out = [(k, v) for k, v in headers if k not in DROPPED_REQUEST]
        if self.upstream_key:
            out.append(("authorization", f"Bearer {self.upstream_key}"))
        target = quote(path, safe="/:@!$&'()*+,;=-._~")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        request = self.client.build_request(scope["method"], target, headers=out, content=body,
                                            timeout=3.0 if health else None)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as err:
            if health:
                return await _error(send, 503, "vLLM is not ready", "ServiceUnavailableError")
            return await _error(send, 502, f"vLLM did not answer: {type(err).__name__}", "BadGatewayError")
        if response.status_code >= 400 and not health:
            response = await _clipped(response)
        try:
            pump = asyncio.ensure_future(_pump(response, send))
            hangup = asyncio.ensure_future(_wait_disconnect(receive))
            await asyncio.wait({pump, hangup}, return_when=asyncio.FIRST_COMPLETED)
            for task in (pump, hangup):
                task.cancel()
            failed, _ = await asyncio.gather(pump, hangup, return_exceptions=True)
            if isinstance(failed, Exception):  # vLLM broke off mid-response: the client sees a cut stream
                print(f"dermvlm front door: {path}: {type(failed).__name__}: {failed}", file=sys.stderr, flush=True)
        finally:
            await response.aclose()  # on a client disconnect too: vLLM sees the stream close and aborts


async def _clipped(response: httpx.Response) -> httpx.Response:
    """vLLM's error answer with its ``error.message`` cut to one readable line (vLLM echoes values it refuses)."""
    if "json" not in response.headers.get("content-type", "") or int(response.headers.get("content-length") or 0
                                                                      ) > MAX_ERROR_BODY:
        return response
    data = await response.aread()
    await response.aclose()
    try:
        payload = json.loads(data)
        error = payload["error"] if isinstance(payload.get("error"), dict) else payload
        error["message"] = clip_line(str(error["message"]))
        data = json.dumps(payload).encode()
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-length", "content-encoding")]  # aread() decoded the body
    # a stream, not content=: httpx marks a content= response as already streamed, and _pump would send no body
    return httpx.Response(response.status_code, headers=[*headers, ("content-length", str(len(data)))],
                          stream=httpx.ByteStream(data))


async def _pump(response: httpx.Response, send: Send) -> None:
    """Copy vLLM's response to the client chunk by chunk (no buffering: SSE events go out as they come)."""
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.multi_items()
                            if k.lower() not in HOP_BY_HOP - {"content-length"}]})
    async for chunk in response.aiter_raw():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


_GONE = b"\0gone"  # identity-compared marker: the client disconnected mid-request


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; ``None`` past ``MAX_BODY``; ``_GONE`` if the client disconnected."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _GONE
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _error(send: Send, status: int, message: str, kind: str, extra: dict[str, str] | None = None) -> None:
    """An OpenAI-style error body, the shape vLLM uses: ``{"error": {"message", "type", "param", "code"}}``."""
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def header_deadline_protocol() -> type:
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers: a client that trickles them (or
    opens a connection and sends nothing) is cut off after ``HEADER_TIMEOUT_S``; idle keep-alive connections keep
    uvicorn's own 5 s limit."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _awaiting_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(HEADER_TIMEOUT_S, self._late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _late(self) -> None:
            self._deadline = None
            if self._awaiting_headers() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._awaiting_headers():
                self._arm()  # a new request has begun to arrive: its headers have until the deadline
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            self._disarm()  # idle now: uvicorn's keep-alive timeout takes over
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dermvlm.serving.proxy", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int, help="an inherited, bound TCP socket to serve on")
    where.add_argument("--port", type=int, help="or a port to bind on --host")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--upstream-uds", required=True)
    parser.add_argument("--allow-image-domain", action="append", default=[])
    parser.add_argument("--max-tokens", type=int, default=None, help="refuse larger token limits (context length)")
    args = parser.parse_args(argv)
    try:
        allowed = frozenset(normalize_domain(d) for d in args.allow_image_domain)
    except MediaPolicyError as err:
        parser.error(str(err))
    import uvicorn

    app = FrontDoor(args.upstream_uds, os.environ.get(API_KEY_ENV) or None, os.environ.get(UPSTREAM_KEY_ENV) or None,
                    allowed, args.max_tokens)
    sock = socket.socket(fileno=args.fd) if args.fd is not None else socket.create_server((args.host, args.port))
    host, port = sock.getsockname()[:2]
    print(f"dermvlm front door: http://{host}:{port} -> unix:{args.upstream_uds} "
          f"(API key {'required' if app.api_key else 'off'}; remote media hosts: "
          f"{', '.join(sorted(allowed)) or 'none'})", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                            lifespan="on", http=header_deadline_protocol())
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
