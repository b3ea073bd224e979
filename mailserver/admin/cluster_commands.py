"""`mailserver cluster status`: the nodes as the nginx auth endpoint sees them.

Read from data_dir/run/cluster-health.json, the file instance 0's health checks
write and every worker's /nginx-auth reads (cluster/health.py), so what it prints is
what the endpoint routes by, not a check of its own.
"""

from __future__ import annotations

import time

from mailserver.admin.commands import Admin, Refused
from mailserver.cluster.health import read_state, state_path


def _when(seconds: float) -> str:
    if not seconds:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds))


def cluster_status(admin: Admin) -> None:
    """One line per node of cluster.nodes: name, address, up/down, since, last check;
    this node marked. Refused (exit 1) when this node has no [cluster] section."""
    cluster = admin.config.cluster
    if not cluster.nodes:
        raise Refused("this node has no [cluster] section (cluster.node, cluster.nodes)")
    path = state_path(admin.config)
    found = read_state(path)
    if found is None:
        admin.note(f"no health checks yet ({path}): is the server running? Every node "
                   "counts as up until they run.")
        found = {}
    width = max(len(name) for name in cluster.nodes)
    for name, address in cluster.nodes.items():
        node = found.get(name)
        mark = "  (this node)" if name == cluster.node else ""
        if node is None or node.address != address:
            admin.say(f"{name:<{width}}  {address:<15}  up    (not checked yet){mark}")
            continue
        state = "up  " if node.up else "down"
        why = f"  {node.error}" if node.error else ""
        admin.say(f"{name:<{width}}  {address:<15}  {state}  since {_when(node.since)}  "
                  f"last check {_when(node.last_check)}{mark}{why}")
