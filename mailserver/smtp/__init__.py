"""ESMTP: the pure grammar, the DATA/BDAT receivers, and the server session.

In charge of: the `smtp` (MX), `submission` and `submissions` listeners, from the bytes
of a client to one IDeliveryTransaction per message.

May import: the base modules (address, reply, errors, logs, config, interfaces), core,
abuse (the shared defences), auth.sasl, auth.realm and auth.sending_limits. Never app/,
store/, queue/, delivery/ or another protocol: where mail goes is the delivery router's
business (IDeliveryRouter in the context).
"""
