-- Per-invitation options (issue 20). `expires_in_days`: the length of the current link,
-- fixed when it is sent; `expiry_chosen`: the person inviting chose it (Link Expiry,
-- `expires_in_days` in the API or invitation.requested), so a Resend keeps that length
-- instead of taking the setting. `personal_message`: plain text shown in the email, kept
-- so a Resend includes it. Rows sent before this keep NULL where the length isn't one of
-- the choices.
ALTER TABLE invitations
    ADD COLUMN expires_in_days integer CHECK (expires_in_days IN (7, 14, 21, 30)),
    ADD COLUMN expiry_chosen boolean NOT NULL DEFAULT false,
    ADD COLUMN personal_message text CHECK (char_length(personal_message) <= 1000);
UPDATE invitations
SET expires_in_days = round(extract(epoch FROM expires_at - sent_at) / 86400)::integer
WHERE round(extract(epoch FROM expires_at - sent_at) / 86400) IN (7, 14, 21, 30);
-- Search by email on the Invitations screen: exact match on the normalised address,
-- newest first (the same key as invitations_one_pending).
CREATE INDEX invitations_email_newest ON invitations (email_lower, created_at DESC, id DESC);
