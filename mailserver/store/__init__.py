"""The Maildir store: durable two-phase delivery, folders, unique names.

In charge of: everything under data_dir/mail/: delivering into new/ (ILocalDelivery),
the one Maildir file-name parser (names.py), POP3's locked maildrop (IMaildrop),
folders, UID lists, the index cache and change notification (IUserStore), and the
IMailboxOpener the protocols open a user's mail through (opener.py).

May import: the base modules (address, reply, errors, logs, config, interfaces) and
core. Never a protocol package, app/, queue/ or delivery/.
"""
