"""Builds the running server: listeners, TLS, connection limits, services.

In charge of: wiring. app/service.py is the one place that builds the ServerContext
(directory, portal, delivery router over the Maildir store and the queue, disk
threads, login throttle) and hands it to each protocol's listener module.

May import: anything in mailserver. It is the only package that imports the protocol
listener modules (smtp.listener, pop3.listener, imap.listener), and nothing in
mailserver imports app/ (tests/test_layering.py checks both).
"""
