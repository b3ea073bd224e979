"""The `mailserver` admin command: users, aliases, queue, check-config."""
