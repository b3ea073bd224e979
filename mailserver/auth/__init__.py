"""Users, aliases, password schemes and the twisted.cred checker every protocol shares."""
