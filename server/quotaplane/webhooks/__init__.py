"""Outgoing webhooks (quota threshold notifications)."""
