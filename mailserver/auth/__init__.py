"""Users, aliases, password schemes and the twisted.cred checker every protocol shares.

In charge of: who exists (the users and aliases files, IRecipientDirectory), how a
password is checked (schemes, the cred checker and realm), and the SASL helpers the
protocols parse AUTH with.

May import: the base modules (address, reply, errors, logs, config, interfaces), core
and abuse. Never a protocol package, app/, store/, queue/ or delivery/. Protocols may
import only auth.sasl, auth.realm and auth.sending_limits from here; the rest reaches
them through the context.
"""
