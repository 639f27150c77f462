"""Which media URLs a request may make the server fetch: ``data:`` URLs always, ``http(s)`` only from allowed hosts.

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


def refused_urls(body: bytes, allowed: frozenset[str]) -> list[Refusal] | None:
    """The refused URLs in a JSON request body (``[]``: none); ``None`` if the body is not JSON.

    Every key/value pair of every object is seen, duplicates included (a later duplicate key cannot hide a URL).
    """
    refusals: list[Refusal] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        for key, value in pairs:
            if isinstance(value, str) and _is_url_key(key):
                refusal = check_url(key, value, allowed)
                if refusal is not None:
                    refusals.append(refusal)
        return dict(pairs)

    try:
        json.loads(body, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return None
    return refusals
