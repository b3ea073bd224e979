"""Builds the running server: listeners, TLS, connection limits, services."""
