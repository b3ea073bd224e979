"""The JSON API under /api/v1/ (issue 18): send, read a mailbox, follow a message.

In charge of: the routes of /api/v1/, their JSON bodies and errors, API tokens and how a
request is authenticated (a Bearer token, or HTTP Basic with the user's password through
the portal and the shared login throttle), per-token rate and per-process concurrency
limits. The OpenAPI 3.1 document is docs/api/openapi.yaml; tests validate against it.

May import: the base modules, core/, auth/ and abuse/. Never a protocol, store/, queue/,
delivery/ or app/: like SMTP and IMAP, the API reaches the mail through the interfaces in
ServerContext (the delivery router, the mailbox opener, the message hooks), and app/
mounts it on the http/https site (core.context.ServerContext.web_resources).
"""
