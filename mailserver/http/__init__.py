"""The HTTP side of the server: listen.http and listen.https (twisted.web).

In charge of: client autoconfiguration (Thunderbird autoconfig, Microsoft Autodiscover,
Apple .mobileconfig), our MTA-STS policy (RFC 8461), ACME HTTP-01 challenge responses
(RFC 8555 8.3; challenges.py is the table the ACME client fills), and /metrics (the
counters themselves live in core/metrics.py, where every session can reach them).

May import: the base modules (address, reply, errors, logs, config, interfaces), core/
and itself. Never a protocol package, app/, store/, queue/, delivery/ or auth/: the
sessions and the ACME client reach this package (metrics, challenges), not the other
way round; app/ wires listener.py like any protocol's listener.
"""
