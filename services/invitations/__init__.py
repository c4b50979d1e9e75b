"""Invitations: one-time invitation links to a portal, their expiry, resend and revoke."""
