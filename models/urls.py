"""Webhook URLs: what a well-formed one is, and which addresses are link-local."""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from yarl import URL

from models.text import control_char, describe

MAX_URL = 2000
_HOST_RE = re.compile(r"^[A-Za-z0-9._~-]{1,253}$")


def link_local(address: str) -> bool:
    """Whether an IP address (text) is link-local: 169.254.0.0/16 or fe80::/10.

    These hold cloud metadata services (169.254.169.254), which a webhook must not
    reach unless a person allowed it. An IPv4 address mapped into IPv6 counts too.
    """
    text = address.split("%", 1)[0]
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(text)
    except ValueError:
        if not re.fullmatch(r"[0-9a-fA-FxX.]{1,40}", text):
            return False
        try:  # the C library reads 2852039166 and 0xa9fea9fe as 169.254.169.254 too
            ip = ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_link_local


def url_host(url: str) -> str:
    """The host of a URL checked by check_webhook_url, without brackets."""
    return urlsplit(url).hostname or ""


def check_webhook_url(value: str, allow_link_local: bool) -> str:
    """Return a webhook URL cleaned, or raise ValueError saying what is wrong with it."""
    url = value  # not stripped: "http://x\n" is refused, not quietly changed
    if not url or len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 or ord(c) == 127
                                            for c in url):
        raise ValueError("must be an http:// or https:// URL without spaces")
    if (char := control_char(url)) is not None:
        raise ValueError(f"must not contain the invisible character {describe(char)}")
    try:
        parts = urlsplit(url)
        port = parts.port  # reading it checks it: a port that is not a number raises
        URL(url)  # what the sender will parse it with must read it too
    except (ValueError, TypeError) as err:
        raise ValueError(f"is not a valid URL ({err})") from err
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    host = parts.hostname or ""
    if not host:
        raise ValueError("must name a host, as in https://example.com/hook")
    if ":" in host:
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError as err:
            raise ValueError(f"host {host[:60]!r} is not a valid IPv6 address") from err
    elif not _HOST_RE.match(host):
        raise ValueError(f"host {host[:60]!r} is not a valid host name")
    if port == 0:
        raise ValueError("port 0 is not a port")
    if link_local(host) and not allow_link_local:
        raise ValueError(f"{host} is a link-local address (where cloud metadata services "
                         "live); set allow_link_local_webhooks in Settings to allow it")
    return url
