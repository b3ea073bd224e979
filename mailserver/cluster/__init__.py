"""Several nodes behind nginx's mail proxy over one shared Maildir tree (issue 19).

In charge of: the node side of a cluster. nodes.py: which node owns a user
(rendezvous hashing over the nodes that are up) and which port serves a protocol;
health.py: instance 0's health checks of every node, shared with the workers through
data_dir/run/cluster-health.json; nginx_auth.py: nginx's `auth_http` endpoint at
/nginx-auth on the http listener.

May import: the base modules (address, reply, errors, logs, config, interfaces),
core, auth and abuse. Never a protocol package, store/, queue/ or app/: app/web.py
mounts the endpoint and app/service.py starts the health checks.
"""
