"""Which node owns a user, and which port on it serves a protocol.

Rendezvous (highest random weight) hashing, Thaler and Ravishankar 1998: every node
gets a weight hash(node, key) and the key goes to the live node of highest weight. A
user's sessions therefore land on one node while it is up; when it goes down only
the keys it owned move (each to its second choice), and when it comes back exactly
those keys move back. A hash ring needs virtual nodes to spread evenly over three
nodes; rendezvous needs none, and with tens of nodes the O(nodes) loop is nothing next
to the password hash that precedes it.

The weight is the first 8 bytes of BLAKE2b over the node's name and the key: stable
across processes, machines and Python versions (Python's hash() is salted per
process, which would send one user to different nodes from different workers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

#: nginx's Auth-Protocol -> the listener that serves it: imap and pop3 in the clear
#: (nginx speaks to the backend without TLS; it terminated the client's), SMTP with a
#: login -> submission, SMTP without one (MX traffic through the proxy) -> smtp.
PROTOCOL_LISTENERS = {"imap": "imap", "pop3": "pop3", "smtp": "submission"}
MX_LISTENER = "smtp"


def weight(node: str, key: str) -> int:
    """The node's weight for `key` (64 bits of BLAKE2b; both names as UTF-8)."""
    digest = hashlib.blake2b(node.encode("utf-8") + b"\0" + key.encode("utf-8"),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranked(key: str, nodes: Iterable[str]) -> list[str]:
    """`nodes` in the order `key` prefers them (highest weight first; ties by name)."""
    return sorted(nodes, key=lambda n: (-weight(n, key), n))


def owner(key: str, nodes: Iterable[str], down: frozenset[str] | set[str] = frozenset(),
          ) -> str | None:
    """The live node of highest weight for `key`; None when every node is down."""
    live = [n for n in nodes if n not in down]
    return ranked(key, live)[0] if live else None


def description_port(description: str) -> int | None:
    """The port of a Twisted server endpoint description ("tcp:143",
    "tcp:port=143:interface=10.0.0.1", "ssl:993:privateKey=..."); None for one without
    a TCP port (unix:, systemd:) or a malformed one."""
    fields = _split(description)
    if len(fields) < 2 or fields[0] not in ("tcp", "tcp6", "ssl"):
        return None
    for i, field in enumerate(fields[1:]):
        name, sep, value = field.partition("=")
        text = value if sep and name == "port" else (field if i == 0 and not sep else None)
        if text is not None:
            return int(text) if text.isdigit() and int(text) < 65536 else None
    return None


def _split(description: str) -> list[str]:
    """Split on the colons Twisted splits on (a backslash escapes one)."""
    fields, current, escaped = [], [], False
    for ch in description:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    fields.append("".join(current))
    return fields


def service_port(name: str, descriptions: Mapping[str, str],
                 listening: Mapping[str, int]) -> int | None:
    """The port listener `name` serves on every node: the one this process really
    listens on (the description may say port 0, as in tests) or else the configured
    one; None when this node has no such listener. Every node listens on the same
    ports (cluster.nodes), so this node's port is the answer for all of them."""
    live = listening.get(name)
    if live:
        return live
    description = descriptions.get(name)
    port = description_port(description) if description else None
    return port or None
