"""What every protocol stands on: the ServerContext, flow control, disk threads and the
login throttle.

In charge of: the small shared runtime of the sessions (core/context.py: the typed
context a listener is built from; flow.py: reading and writing under back-pressure;
diskio.py: blocking disk work off the reactor; throttle.py: failed logins per address;
metrics.py: the Prometheus counters, bumped by one-line hooks in the sessions;
dns.py: the one DNS resolver with its shared cache).

May import: the base modules (address, reply, errors, logs, config, interfaces),
abuse/ (the shared counters the login throttle stands on) and itself. Never a protocol package, app/, store/, queue/, delivery/ or auth/: they all
stand on core, not the other way round.
"""
