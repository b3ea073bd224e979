"""POP3 (RFC 1939) over the users' INBOX Maildirs: `pop3` with STLS, `pop3s` (RFC 8314)."""
