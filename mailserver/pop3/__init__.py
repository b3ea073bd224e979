"""POP3 (RFC 1939) over the users' INBOX Maildirs: `pop3` with STLS, `pop3s` (RFC 8314).

In charge of: the POP3 grammar, session and the wire form of messages (maildrop.py)
of the `pop3` and `pop3s` listeners. The maildrop itself (snapshot, [IN-USE] lock,
deletions) is the store's, reached as IMaildrop through the context's IMailboxOpener.

May import: the base modules (address, reply, errors, logs, config, interfaces), core,
abuse, auth.sasl and auth.realm. Never app/, store/, queue/, delivery/ or another
protocol: the maildrop is reached through interfaces.IMailboxOpener / IMaildrop.
"""
