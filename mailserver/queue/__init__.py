"""The durable outbound queue: spool on disk, scheduler, routing, SMTP client, bounces.

See docs/sending.md for how it behaves and docs/decisions/0006-queue-layout.md for the
files it keeps under data_dir/queue/.

In charge of: every message that leaves this server, from the held entry the delivery
router commits to the remote MX's reply (or the bounce).

May import: the base modules (address, reply, errors, logs, config, interfaces), core
and store. Never a protocol package (its SMTP client is its own) and never app/; it
delivers to local mailboxes through the IDeliveryTarget in the context.
"""
