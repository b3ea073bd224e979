"""mailserver: one Twisted program that receives, relays and serves mail over Maildir.

The layers, bottom up (docs/architecture.md draws them; tests/test_layering.py checks
who imports whom):

- base modules: address, reply, errors, logs, config, interfaces (the seams);
- core/: what the protocols stand on (context, connection base and line rules, flow
  control, disk threads, throttle);
- auth/, store/, queue/, delivery/: users, the Maildir store, the relay queue, and the
  router that hands each message to local mailboxes and/or the queue;
- smtp/, pop3/, imap/: the protocols, which see the layers below only through core and
  the interfaces;
- app/: builds the server and wires everything (the only importer of the listeners);
  admin/: the operator's command line.
"""

__version__ = "0.1.0"
