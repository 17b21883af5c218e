"""Who is asking, for every route alike: the API key check, and the client's rate-limit key."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import socket
from typing import Final

from aiohttp import web

# Unsent bytes the kernel keeps per connection (TCP_NOTSENT_LOWAT).  Without it, send buffers
# autotune to megabytes, so a client that stops reading is noticed (--send-timeout) only
# after seconds of audio pile up in them; bytes in flight are not counted, so a long fat
# link loses no throughput.
_UNSENT_BYTES: Final = 64 * 1024


def _digest(value: str) -> bytes:
    # Hashing first makes the comparison constant-time in the key's length too.
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def authorized(request: web.Request, key: str | None) -> bool:
    """Whether ``request`` carries ``key`` (``Authorization: Bearer`` or ``X-API-Key``)."""
    if key is None:
        return True
    expected = _digest(key)
    offered = []
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        offered.append(token.strip())
    if (header := request.headers.get("X-API-Key")) is not None:
        offered.append(header.strip())
    ok = False
    for candidate in offered:  # no early exit: the time taken does not say which one matched
        ok |= hmac.compare_digest(_digest(candidate), expected)
    return ok


def client_key(request: web.Request) -> str:
    """The rate-limit key: the IP address, or its /64 for IPv6 (one host, many addresses)."""
    remote = request.remote or "unknown"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def limit_unsent(request: web.Request) -> None:
    """Keep the kernel's unsent buffer small on this connection (see ``_UNSENT_BYTES``)."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and hasattr(socket, "TCP_NOTSENT_LOWAT"):
        with contextlib.suppress(OSError):  # not TCP (a Unix socket), or an older kernel
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, _UNSENT_BYTES)
