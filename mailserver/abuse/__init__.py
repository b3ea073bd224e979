"""Defences of a server on the open internet, shared by every service and process.

In charge of: the counters every defence shares across services and worker processes
and the policies on them. table.py holds the counters (a shared memory map, docs/decisions/0012); control.py the
policies on top (login lock-outs, connection and port-25 rates, directory harvest,
sending quotas); passwords.py the weak password check; dnsbl.py the DNS blocklist
score. The per-user sending limits file is auth/sending_limits.py's.

May import: the base modules (address, reply, errors, logs, config, interfaces) only, so
that core/ (the login throttle, the context) and every protocol may stand on it.
"""
