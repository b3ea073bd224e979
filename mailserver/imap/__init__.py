"""IMAP4rev1 server (RFC 3501) over the Maildir store.

In charge of: the IMAP grammar, sessions and response builders of the `imap` and
`imaps` listeners.

May import: the base modules (address, reply, errors, logs, config, interfaces), core,
abuse, auth.sasl and auth.realm. Never app/, store/, queue/, delivery/ or another
protocol: folders are reached through interfaces.IMailboxOpener, IUserStore and
IMailboxView.
"""
