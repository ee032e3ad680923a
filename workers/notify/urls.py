"""Which notify URLs the service may call: its outbound policy against SSRF.

A URL is checked when a job is submitted and again before every delivery attempt (DNS may have
changed): scheme ``https`` (``http`` only with ``SOFTUNLEARN_WEBHOOK_ALLOW_HTTP``), no userinfo,
a host on the allow-list when one is set, and every address the host resolves to public.
Loopback, private (RFC 1918, unique-local) and shared (100.64/10) addresses are allowed only with
``SOFTUNLEARN_WEBHOOK_ALLOW_PRIVATE``; link-local (169.254.169.254, the cloud metadata service,
and fe80::/10), multicast, reserved, broadcast and unspecified addresses never are. IPv4-mapped
IPv6 addresses are judged as the IPv4 address they carry. The delivery then connects to the
checked address itself (:class:`Target`), so a second DNS answer cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urlsplit, urlunsplit

if TYPE_CHECKING:
    from workers.settings import ServiceSettings

__all__ = ["MAX_URL_LENGTH", "Target", "UrlPolicy", "UrlRefused", "address_refusal", "display_url",
           "resolve_target"]

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_SHARED = ipaddress.ip_network("100.64.0.0/10")
"""Carrier-grade NAT space: not global, not private either."""


class UrlRefused(ValueError):
    """A notify URL the policy does not allow; the message says why (never a secret)."""


@dataclass(frozen=True)
class UrlPolicy:
    """The operator's outbound rules (from the ``SOFTUNLEARN_WEBHOOK_*`` settings)."""

    allow_http: bool = False
    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> UrlPolicy:
        """The policy ``settings`` describe."""
        hosts = tuple(h.strip().lower().rstrip(".") for h in settings.webhook_allowed_hosts.split(",")
                      if h.strip())
        return cls(settings.webhook_allow_http, settings.webhook_allow_private, hosts)

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` is on the allow-list (exact, or under a ``*.suffix`` entry); an empty
        list allows every host."""
        if not self.allowed_hosts:
            return True
        return any(host == entry or (entry.startswith("*.") and host.endswith(entry[1:]))
                   for entry in self.allowed_hosts)


@dataclass(frozen=True)
class Target:
    """Where to connect for a checked URL: the URL with the checked address in place of the host,
    the ``Host`` header to send and the TLS server name (SNI and certificate check)."""

    url: str
    host_header: str
    server_name: str
    address: str


def address_refusal(address: IPAddress, allow_private: bool) -> str | None:
    """Why ``address`` may not be called (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_link_local:
        return "a link-local address (e.g. the cloud metadata service)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_loopback:  # before is_reserved: ::1 lies in the reserved ::/8
        return None if allow_private else "a loopback address"
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_global:
        return None
    if allow_private and (address.is_private or address in _SHARED):
        return None
    return "a private or non-public address"


def _checked_parts(url: str, policy: UrlPolicy) -> SplitResult:
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise UrlRefused("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"the URL is malformed ({exc})") from None
    allowed = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme not in allowed:
        raise UrlRefused(f"scheme {parts.scheme or '(none)'!r} is not allowed; use "
                         + (" or ".join(allowed)))
    if "@" in parts.netloc:
        raise UrlRefused("credentials in the URL (user:password@) are not allowed")
    if not parts.hostname:
        raise UrlRefused("the URL has no host")
    if not parts.hostname.isascii():
        raise UrlRefused("the host has non-ASCII characters; write it in its punycode (xn--) form")
    if port == 0:
        raise UrlRefused("port 0 is not allowed")
    if not policy.host_allowed(parts.hostname.rstrip(".")):
        raise UrlRefused(f"host {parts.hostname[:100]!r} is not on this service's allow-list "
                         "(SOFTUNLEARN_WEBHOOK_ALLOWED_HOSTS)")
    return parts


def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlRefused(f"host {host[:100]!r} does not resolve ({exc})") from None
    # getaddrinfo may append a scope ("fe80::1%eth0"); the address part is what is judged.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found))


def resolve_target(url: str, policy: UrlPolicy) -> Target:
    """Check ``url`` against ``policy``, resolve its host and check every address; returns where
    to connect (the first address).

    Raises:
        UrlRefused: the URL or one of its host's addresses is not allowed, or the host does not resolve.
    """
    parts = _checked_parts(url, policy)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _addresses(host, port)
    if not addresses:
        raise UrlRefused(f"host {host[:100]!r} has no address")
    for address in addresses:
        why = address_refusal(address, policy.allow_private)
        if why is not None:
            shown = "" if str(address) == host else f" ({address})"
            raise UrlRefused(f"host {host[:100]!r} is{shown} {why}; only public addresses are allowed"
                             + ("" if policy.allow_private else " (SOFTUNLEARN_WEBHOOK_ALLOW_PRIVATE)"))
    chosen = addresses[0]
    literal = f"[{chosen}]" if chosen.version == 6 else str(chosen)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host_header = parts.netloc
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return Target(url=pinned, host_header=host_header, server_name=host, address=str(chosen))


def display_url(url: str) -> str:
    """``url`` as recorded and logged: without its query string and fragment (they may carry tokens)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(malformed URL)"
    shown = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return shown + ("?…" if parts.query else "")
