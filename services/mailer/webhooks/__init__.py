"""Webhooks: lifecycle events POSTed, signed, to the endpoints administrators register."""
