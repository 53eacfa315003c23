"""The request guard: which Host names, Origins, body types and encodings the server accepts.

A browser lets any web page send "simple" cross-origin requests (no preflight) and open a
WebSocket to any origin, and a DNS-rebinding page even makes its requests look same-origin to
a loopback server. So, before any handler runs:

* the ``Host`` must name this server: loopback, the bind host, an IP literal, or a name in
  ``FEDAVG_ALLOWED_HOSTS``; anything else is 421;
* a state-changing request or a WebSocket upgrade must carry no ``Origin`` (a program, not a
  page), our own origin, or one in ``FEDAVG_ALLOWED_ORIGINS``; anything else is 403;
* no request may carry a body a plain HTML form can make (415): those skip the preflight;
* no request body may be compressed (415): aiohttp would inflate it, and 500 KB of gzip
  becomes 500 MB.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from server.errors import Forbidden, MisdirectedRequest, UnsupportedMediaType
from server.settings import Settings, origin_key

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The types an HTML form or a no-cors fetch can send without a CORS preflight.
SIMPLE_BODY_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]"})


class RequestGuard:
    """The policy of one app, built from its settings; ``check`` raises the refusal."""

    def __init__(self, settings: Settings) -> None:
        names = {name.lower() for name in settings.allowed_hosts}
        self.any_host = "*" in names
        if settings.host.lower() not in WILDCARD_BINDS:
            names.add(settings.host.lower().strip("[]"))
        self.host_names = frozenset(names | {"localhost"})
        self.trusted_origins = frozenset(
            key for key in map(origin_key, settings.allowed_origins) if key is not None
        )

    def check(self, request: web.Request) -> None:
        host = request.headers.get(hdrs.HOST)
        # 421 Misdirected Request (RFC 9110, 15.5.20), not 400: the request is well formed,
        # it was just meant for another server (a rebound name), and says so to a client.
        if host is not None and not self.serves(host):
            raise MisdirectedRequest(
                f"this server does not answer for Host {host[:100]!r}; add the name to "
                "FEDAVG_ALLOWED_HOSTS if it is really ours"
            )
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
        if encoding not in ("", "identity"):
            raise UnsupportedMediaType(
                f"Content-Encoding {encoding[:40]!r} is refused: send request bodies uncompressed"
            )
        upgrade = hdrs.UPGRADE in request.headers
        if request.method in SAFE_METHODS and not upgrade:
            return
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and not self.trusts(origin, request):
            raise Forbidden(
                f"requests from the web page at {origin[:100]!r} are refused (cross-origin); "
                "use the dashboard this server serves, or add that origin to "
                "FEDAVG_ALLOWED_ORIGINS"
            )
        media_type = request.headers.get(hdrs.CONTENT_TYPE, "").partition(";")[0]
        if media_type.strip().lower() in SIMPLE_BODY_TYPES:
            raise UnsupportedMediaType(
                f"a {media_type.strip()[:60]} body is refused here: the control endpoints "
                "take no body, and uploads are application/octet-stream"
            )

    def serves(self, host_header: str) -> bool:
        """Whether ``Host: host_header`` names this server (a DNS-rebinding page's does not)."""
        if self.any_host:
            return True
        name = _host_name(host_header)
        if name in self.host_names or name.endswith(".localhost"):
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        # An IP literal cannot be rebound: a page whose origin is that address is ours.
        return True

    def trusts(self, origin: str, request: web.Request) -> bool:
        key = origin_key(origin)
        if key is None:  # "null" (sandboxed frames, file: pages) or garbage
            return False
        return key in self.trusted_origins or key == _own_origin(request)


def _host_name(host_header: str) -> str:
    """The name in a Host header, lower-cased: ``[::1]:80`` -> ``::1``, ``a.b:1`` -> ``a.b``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, _, port = host.rpartition(":")
    return name.rstrip(".") if name and port.isdigit() else host.rstrip(".")


def _own_origin(request: web.Request) -> tuple[str, str, int] | None:
    """The origin of the page this server would serve on this request's own Host."""
    host = request.headers.get(hdrs.HOST)
    if host is None:
        return None
    return origin_key(f"{request.scheme}://{host}")


def request_guard(settings: Settings) -> Middleware:
    """The middleware: runs before every handler, so a refused WebSocket is never upgraded."""
    guard = RequestGuard(settings)

    @web.middleware
    async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        guard.check(request)
        return await handler(request)

    return guard_middleware
