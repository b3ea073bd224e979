"""Webhooks (issue 18): delivery and arrival events POSTed as signed JSON.

In charge of: users' and domains' hook registrations (hooks.py), the durable spool of
pending POSTs under data_dir/webhooks/ (spool.py), turning DeliveryEvents into spooled
payloads (publisher.py, an events.IDeliveryEvents listener), the SSRF-safe HTTP client
(urlcheck.py, sender.py), Standard Webhooks signatures (signing.py) and the dispatcher
that POSTs, retries with back-off and gives up (dispatcher.py, instance 0 only).

May import: the base modules and core/. The queue and the local delivery publish
through events.IDeliveryEvents, which app/ hands them; the API reaches the registry
through events.IWebhookRegistry (ServerContext.webhooks).
"""
