-- Bulk invitations (issue 16). `invitee_name`: the person's name as the inviter gave it
-- (Import Clients, the batch API), shown in the email's greeting and kept for a Resend.
ALTER TABLE invitations
    ADD COLUMN invitee_name text CHECK (char_length(invitee_name) <= 200);
-- One row per batch row key that made or resent an invitation, written in the same
-- transaction: a retried batch answers each row as it was first answered and sends
-- nothing twice (a resend keeps the invitation's first idempotency key, so that column
-- can't tell a retried resend from a new one).
CREATE TABLE batch_keys (
    key           text PRIMARY KEY CHECK (char_length(key) <= 300),
    invitation_id uuid NOT NULL REFERENCES invitations (id),
    portal_id     uuid NOT NULL,
    email_lower   text NOT NULL,
    outcome       text NOT NULL CHECK (outcome IN ('created', 'resent')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
