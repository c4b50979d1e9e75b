-- Every link ever sent, by the SHA-256 of its token (never the token): a link replaced by
-- a newer one is still known, so its page can say "replaced" instead of "not valid". The
-- rows are also the send log that the caps on new links count (emails per invitation and
-- per address, per hour; Email me a new link, per day).
-- reason: invited (the first email), staff, api, invitation_requested,
-- requested_by_invitee, reminder; NULL for a resend made before links were recorded.
CREATE TABLE invitation_links (
    token_hash    text PRIMARY KEY,
    invitation_id uuid NOT NULL REFERENCES invitations (id),
    email_lower   text NOT NULL,
    issued_at     timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    reason        text,
    replaced_at   timestamptz
);
-- The sends of one invitation, newest first (the per-invitation caps).
CREATE INDEX invitation_links_invitation ON invitation_links (invitation_id, issued_at DESC);
-- The re-sends to one address (the per-address cap; first invitations don't count).
CREATE INDEX invitation_links_address ON invitation_links (email_lower, issued_at DESC)
    WHERE reason IS DISTINCT FROM 'invited';

INSERT INTO invitation_links (token_hash, invitation_id, email_lower, issued_at, expires_at, reason)
SELECT token_hash, id, email_lower, sent_at, expires_at,
       CASE WHEN send_count = 1 THEN 'invited' END
FROM invitations;

-- Why the current link was sent (the Invitations screen: "Sent again at the client's
-- request"), and when the invitation's one reminder went.
ALTER TABLE invitations
    ADD COLUMN send_reason text DEFAULT 'invited',
    ADD COLUMN reminded_at timestamptz;
UPDATE invitations SET send_reason = NULL WHERE send_count > 1;
-- The reminder sweep: pending invitations not reminded yet, by expiry.
CREATE INDEX invitations_remind_due ON invitations (expires_at, id)
    WHERE status = 'pending' AND reminded_at IS NULL;

-- Invitation Reminder (Settings → Access & Login): days before expiry, 0 = Off.
ALTER TABLE settings
    ADD COLUMN invitation_reminder_days integer NOT NULL DEFAULT 0
        CHECK (invitation_reminder_days IN (0, 1, 3));

-- "Email me a new link" requests waiting for the worker. The page answers as soon as the
-- row is written, before anything about the invitation is read, so the answer and its
-- timing are the same whatever happens next. One row per link: repeated clicks coalesce.
CREATE TABLE link_requests (
    token_hash   text PRIMARY KEY,
    requested_at timestamptz NOT NULL
);
CREATE INDEX link_requests_oldest ON link_requests (requested_at);
