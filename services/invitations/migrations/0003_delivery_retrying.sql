-- The mailer announces each deferred try (mail.retrying): the invitation shows
-- "Retrying — next try at …" until its mail is sent or has failed for good.
ALTER TABLE invitations DROP CONSTRAINT invitations_delivery_check;
ALTER TABLE invitations ADD CONSTRAINT invitations_delivery_check
    CHECK (delivery IN ('queued', 'retrying', 'sent', 'failed'));
ALTER TABLE invitations ADD COLUMN delivery_next_attempt_at timestamptz;
