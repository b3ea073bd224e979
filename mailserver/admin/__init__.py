"""The `mailserver` admin command: users, aliases, queue, check-config, reload, status,
sendmail.

In charge of: what an operator runs by hand beside the server (`mailserver user add`,
`mailserver queue show`, `mailserver check-config`): offline work on the same files;
`reload` only signals the running server, `status` and `sendmail` read and write files.

May import: the base modules (address, reply, errors, logs, config, interfaces), core,
abuse, auth, store, queue, senderauth (DKIM keys, the records' checks), cluster (the
nodes' health file) and http's pure policy module (the MTA-STS id). Never a protocol package (smtp, pop3, imap) and never
app/: the admin command does not start the server.
"""
