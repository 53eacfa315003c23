"""Who may do what: join token for nodes, session tokens for transfers, admin token for control."""

from __future__ import annotations

import secrets

from aiohttp import web

from server.errors import Unauthorized
from server.registry import NodeRegistry, NodeSession
from server.settings import Settings


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(presented: str | None, expected: str) -> bool:
    return presented is not None and secrets.compare_digest(presented.encode(), expected.encode())


def check_node_join(request: web.Request, settings: Settings) -> None:
    if settings.node_token is not None and not _matches(bearer(request), settings.node_token):
        raise Unauthorized("a valid node join token (FEDAVG_NODE_TOKEN) is required")


def require_admin(request: web.Request, settings: Settings) -> None:
    if settings.admin_token is not None and not _matches(bearer(request), settings.admin_token):
        raise Unauthorized(
            "this endpoint needs the admin token: Authorization: Bearer <FEDAVG_ADMIN_TOKEN>"
        )


def node_session(request: web.Request, registry: NodeRegistry) -> NodeSession:
    token = bearer(request)
    session = registry.by_token(token) if token else None
    if session is None:
        raise Unauthorized("a valid node session token is required (connect over /ws/node first)")
    return session
