"""Defences of a server on the open internet, shared by every service and process.

table.py holds the counters (a shared memory map, docs/decisions/0009); control.py the
policies on top (login lock-outs, connection and port-25 rates, directory harvest,
sending quotas); quotas.py the per-user sending limits file; passwords.py the weak
password check; dnsbl.py the DNS blocklist score.
"""
