"""The Maildir store: durable two-phase delivery, folders, unique names."""
