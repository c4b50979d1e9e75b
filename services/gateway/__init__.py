"""The gateway: the browser's only entry (pages, /api/v1, sessions, CSRF)."""
