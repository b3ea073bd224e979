"""What every protocol stands on: the ServerContext, the connection base, flow control,
disk threads and the login throttle.

In charge of: the small shared runtime of the sessions (context.py: the typed context a
listener is built from; connection.py: the connection base of the SMTP, POP3 and IMAP
sessions, with lines.py's framing rules side by side; flow.py: reading and writing
under back-pressure; diskio.py: blocking disk work off the reactor; throttle.py: failed
logins per address; metrics.py: the Prometheus counters, bumped by one-line hooks in the
sessions; dns.py: the one DNS resolver with its shared cache), what both doors of message
submission share (submission.py: the sender, From and sending-limit rules; headers.py:
the header section seen while it streams; trace.py: the Received field; used by SMTP
submission and the HTTP API), and two file helpers the
server and the admin tool share (ownfiles.py: what root creates goes to data_dir's
owner, no symlinks followed; running.py: whether a server holds data_dir).

May import: the base modules (address, reply, errors, logs, config, interfaces),
abuse/ (the shared counters the login throttle stands on) and itself. Never a protocol package, app/, store/, queue/, delivery/ or auth/: they all
stand on core, not the other way round.
"""
