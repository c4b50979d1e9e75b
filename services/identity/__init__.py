"""The identity service: users, roles, passwords, sessions, password resets, login settings."""
