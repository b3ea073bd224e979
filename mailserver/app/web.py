"""What the http/https site serves beside its own endpoints (ServerContext.web_resources).

The one place the web-facing packages (api/, and the cluster's auth endpoint) are
wired to the site; http/ itself never imports them.
"""

from __future__ import annotations

from typing import Any

from mailserver.api.auth import authenticate
from mailserver.api.resource import ApiResource
from mailserver.cluster.nginx_auth import PATH as NGINX_AUTH_PATH
from mailserver.cluster.nginx_auth import NginxAuthResource
from mailserver.core.context import ServerContext

#: Bytes of JSON around a message's base64 (names, headers, the structure itself).
JSON_OVERHEAD = 1024 * 1024


def web_resources(context: ServerContext) -> dict[bytes, Any]:
    """Path prefix -> resource, for this context's config."""
    config = context.config
    mounts: dict[bytes, Any] = {}
    if config.api.enabled:
        # A message travels as base64 in JSON: 4/3 of its size, plus the structure.
        max_body = config.limits.message_size * 4 // 3 + JSON_OVERHEAD
        mounts[b"/api/"] = ApiResource(context, authenticate, max_body=max_body)
    if config.cluster.nodes:  # nginx's auth_http (issue 19): only in a cluster
        mounts[NGINX_AUTH_PATH] = NginxAuthResource(context)
    return mounts
