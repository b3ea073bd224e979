"""IMAP4rev1 server (RFC 3501) over the Maildir store."""
