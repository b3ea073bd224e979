"""Sender authentication: who really sent a message, and our signature on what we send.

Inbound (the smtp listener only): SPF (RFC 7208) of HELO and MAIL FROM, DKIM (RFC 6376,
RFC 8463) of every signature up to a cap, DMARC (RFC 7489), ARC (RFC 8617) and iprev
(RFC 8601 2.7.3), reported in one Authentication-Results header (RFC 8601) and turned
into a policy action: accept, junk, or refuse. Outbound: DKIM signatures with one
Ed25519 and one RSA key per local domain (signing.py, keys.py).

The record parsing and crypto are the field's libraries (dkimpy, pyspf,
publicsuffixlist; docs/decisions/0014); every DNS query they make goes through our
resolver (core/dns.py) under one time budget per message (lookups.py), and all of it
runs in threads, never on the reactor.

In charge of: the inbound checks and their policy, DKIM keys and signing, SRS, and the
message hooks (interfaces.IMessageHook) app/ gives the SMTP listeners.

May import: the base modules, core/ (the resolver, disk threads), store/ (the Junk
folder's delivery) and delivery/ (the router's transaction a hook wraps). Never a
protocol: the SMTP session knows it only through IMessageHook. Imported by app/ (the
wiring) and admin/ (dns-records, dkim).
"""
