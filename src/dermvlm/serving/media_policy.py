"""What a request may carry: content parts of the types dermvlm uses, media URLs that are ``data:`` URLs or on an
allowed host, bounded sampling. Default-deny: anything else is refused before vLLM sees it.

``request_problem`` checks a JSON body: every content part (an element of a ``content`` list, or any object with a
key vLLM reads as media: ``image_pil``, ``input_audio``, ``video_url`` ...) must be a ``text`` part or an
``image_url`` part with no other keys, and its URL passes ``check_url``; a repeated key anywhere is refused (the
parts vLLM reads must be the parts checked); ``n`` / ``best_of`` and the token limits are bounded.

vLLM fetches any ``http(s)`` URL it finds in a chat content part (``image_url``, ``video_url``, ``audio_url``,
``input_image``, Anthropic ``source.url``, MCP ``server_url`` ...), which lets a client make the server reach
internal addresses (SSRF). ``refused_urls`` walks a JSON body and returns every string under a key named ``url``
or ending in ``_url`` that is neither a ``data:`` URL nor an ``http(s)`` URL on an allowed host. Hosts are compared
exactly (lower case), the way vLLM's ``--allowed-media-domains`` compares them; URLs are parsed with urllib3's
``parse_url``, the parser vLLM uses, so both sides read the same host.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

ALLOW_FLAG = "--allow-image-domain"
_HOST_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,62}[a-z0-9_])?)*$")
_IPV6_RE = re.compile(r"^\[[0-9a-f:.]+\]$")


class MediaPolicyError(ValueError):
    """A host name given to ``--allow-image-domain`` is not a plain host name."""


def normalize_domain(domain: str) -> str:
    """``Images.Example.org`` → ``images.example.org``; a URL, a port, a path or a wildcard is an error."""
    d = domain.strip().lower()
    if not d or "://" in d or "/" in d or "*" in d or (":" in d and not _IPV6_RE.match(d)):
        raise MediaPolicyError(f"{ALLOW_FLAG} {domain!r}: give a host name such as images.example.org "
                               "(no scheme, port, path or wildcard)")
    if not (_HOST_RE.match(d) or _IPV6_RE.match(d)):
        raise MediaPolicyError(f"{ALLOW_FLAG} {domain!r}: not a valid host name")
    return d


@dataclass(frozen=True)
class Refusal:
    """One URL the policy refuses: the JSON key it was under, its host (``None`` if it has none) and why."""

    key: str
    url: str
    host: str | None
    reason: str

    def message(self) -> str:
        if self.host is None:
            return (f"{self.key}: {self.reason}; send images inline as data:image/...;base64 URLs "
                    f"(refused: {self.url[:80]!r})")
        return (f"{self.key}: the server does not fetch media from {self.host!r} ({self.reason}); send the image "
                f"as a data:image/...;base64 URL, or start the server with {ALLOW_FLAG} {self.host}")


def _is_url_key(key: str) -> bool:
    k = key.lower()
    return k == "url" or k.endswith("_url")


def check_url(key: str, url: str, allowed: frozenset[str]) -> Refusal | None:
    """``None`` if vLLM may load ``url``, else why not."""
    if not url or url[:5].lower() == "data:":  # vLLM's own test for inline data
        return None
    try:
        spec = parse_url(url.strip())
    except (LocationParseError, ValueError):
        return Refusal(key, url, None, "not a valid URL")
    scheme = (spec.scheme or "").lower()
    if scheme.startswith("http"):
        host = (spec.hostname or "").lower()
        if not host:
            return Refusal(key, url, None, "an http(s) URL without a host")
        if scheme not in ("http", "https"):
            return Refusal(key, url, host, f"scheme {scheme!r}")
        if host in allowed:
            return None
        return Refusal(key, url, host, "remote media are off by default" if not allowed
                       else f"allowed hosts: {', '.join(sorted(allowed))}")
    if scheme == "file":
        return Refusal(key, url, None, "local file URLs are not accepted")
    return Refusal(key, url, None, "only data: URLs (and http(s) URLs on allowed hosts) are accepted")


MAX_N = 16  # completions per request (``n``, ``best_of``): evaluation asks 1, a DPO sampler a few
ACCEPTED_PARTS = {"text": frozenset({"type", "text"}), "image_url": frozenset({"type", "image_url"})}
IMAGE_URL_KEYS = frozenset({"url", "detail"})
# Keys that make vLLM read an object as a media content part, whatever its ``type`` (vLLM 0.32's MM_PARSER_MAP and
# its type-less forms; a test checks this against the installed vLLM).
MEDIA_KEYS = frozenset({"image_url", "input_image", "image_pil", "image_embeds", "audio_url", "input_audio",
                        "audio_embeds", "video_url", "video_embeds", "prompt_embeds", "file", "input_file",
                        "tool_reference"})
TOKEN_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "min_tokens")


def part_problem(part: Any) -> str | None:
    """Why a content part is refused (``None``: a text part, or an image_url part whose URL is checked apart)."""
    if not isinstance(part, dict):
        return None if isinstance(part, str) else f"a content part must be an object, not {type(part).__name__}"
    kind = part.get("type")
    accepted = ", ".join(ACCEPTED_PARTS)
    if not isinstance(kind, str):
        return f"a content part without a 'type'; this server accepts {accepted} parts"
    if kind not in ACCEPTED_PARTS:
        return (f"content part type {kind[:40]!r} is not accepted; this server accepts {accepted} parts "
                "(images as data:image/...;base64 URLs)")
    extra = sorted(set(part) - ACCEPTED_PARTS[kind])
    if extra:
        return f"a {kind!r} content part with key {extra[0][:40]!r}: only {', '.join(sorted(ACCEPTED_PARTS[kind]))}"
    if kind == "text" and not isinstance(part.get("text"), str):
        return "a 'text' content part whose 'text' is not a string"
    image = part.get("image_url")
    if kind == "image_url" and not (isinstance(image, str) or (isinstance(image, dict) and isinstance(
            image.get("url"), str) and set(image) <= IMAGE_URL_KEYS)):
        return "an 'image_url' content part must be {'url': 'data:image/...'} (optionally with 'detail')"
    return None


def request_problem(body: bytes, allowed: frozenset[str], max_tokens: int | None = None) -> str | None:
    """Why the front door refuses a JSON request body (one line), or ``None``."""
    problems: list[str] = []
    refusals = refused_urls(body, allowed, problems)
    if refusals is None:
        return "request body is not valid JSON"
    if problems:
        return problems[0]
    if refusals:
        return refusals[0].message()
    data = json.loads(body)
    if isinstance(data, dict):
        for key in ("n", "best_of"):
            value = data.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value > MAX_N):
                return f"{key}: at most {MAX_N} completions per request (got {str(value)[:20]})"
        for key in TOKEN_LIMITS:
            value = data.get(key)
            if max_tokens and isinstance(value, int | float) and value > max_tokens:
                return f"{key}: at most {max_tokens} tokens on this server (its context length; got {str(value)[:20]})"
    return None


def _part_lists(key: str, value: Any) -> list[Any]:
    return value if key == "content" and isinstance(value, list) else []


def refused_urls(body: bytes, allowed: frozenset[str], problems: list[str] | None = None) -> list[Refusal] | None:
    """The refused URLs in a JSON request body (``[]``: none); ``None`` if the body is not JSON. With ``problems``,
    also collect refused content parts and repeated keys there.

    Every key/value pair of every object is seen, duplicates included (a later duplicate key cannot hide a URL).
    """
    refusals: list[Refusal] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        for key, value in pairs:
            if isinstance(value, str) and _is_url_key(key):
                refusal = check_url(key, value, allowed)
                if refusal is not None:
                    refusals.append(refusal)
            if problems is not None:
                problems.extend(p for part in _part_lists(key, value) if (p := part_problem(part)) is not None)
        if problems is not None:
            if len(obj) != len(pairs):
                repeated = next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))
                problems.append(f"the key {repeated[:40]!r} appears twice in one object; send it once")
            if MEDIA_KEYS & set(obj) and (problem := part_problem(obj)) is not None:
                problems.append(problem)
        return obj

    try:
        json.loads(body, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return None
    return refusals
