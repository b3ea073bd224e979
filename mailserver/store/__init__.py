"""The Maildir store: durable two-phase delivery, folders, unique names.

In charge of: everything under data_dir/mail/: delivering into new/ (ILocalDelivery),
folders, UID lists, the index cache and change notification (IUserStore).

May import: the base modules (address, reply, errors, logs, config, interfaces) and
core. Never a protocol package, app/, queue/ or delivery/.
"""
