"""The durable outbound queue: spool on disk, scheduler, routing, SMTP client, bounces.

See docs/sending.md for how it behaves and docs/decisions/0006-queue-layout.md for the
files it keeps under data_dir/queue/.
"""
