"""Where mail goes: the one delivery target every producer of mail hands messages to.

In charge of: the split of recipients into local mailboxes and remote addresses
(router.py), and of committing the local copies and the queue copy of one message in the
order that leaves nothing behind when either fails.

May import: interfaces, config, errors, reply, address, logs. Never a protocol package
(smtp, pop3, imap), never app/, and never store/ or queue/ themselves: it sees them only
through ILocalDelivery and IOutboundQueue, which app/service.py plugs in.
"""
