"""POP3 (RFC 1939) over the users' INBOX Maildirs: `pop3` with STLS, `pop3s` (RFC 8314).

In charge of: the POP3 grammar, session and maildrop of the `pop3` and `pop3s`
listeners.

May import: the base modules (address, reply, errors, logs, config, interfaces), core,
auth.sasl and auth.realm. Never app/, store/, queue/, delivery/ or another protocol.
(pop3/server.py and pop3/maildrop.py still use store/maildir.py directly: allowed
exceptions listed in tests/test_layering.py until they go.)
"""
