"""Who may use the chat page: anyone on this machine when it listens on loopback; beyond it, only with the password
it was started with (``--page-password``), since a reachable page lets anyone upload images and use the model."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable


class PageAccessError(ValueError):
    """The page would be reachable beyond this machine without a password."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def page_access(host: str, password: str | None) -> Callable[[str, str], bool] | None:
    """Gradio's ``auth`` for the page: ``None`` (open) on loopback without a password, else a check of the
    password (any user name); refuses a non-loopback ``host`` without one."""
    if not password:
        if is_loopback(host):
            return None
        raise PageAccessError(f"--host {host}: the page would be reachable beyond this machine without a password; "
                              "give --page-password (or DERMVLM_PAGE_PASSWORD), or keep --host 127.0.0.1")
    expected = password.encode()
    return lambda _user, given: hmac.compare_digest((given or "").encode(), expected)
