-- An invitation closed or given a new link while its email still waited in the mailer
-- (queued, or waiting for a retry): the email is withdrawn (mail.withdraw) and never
-- sent, and the invitation shows "Withdrawn" instead of "Retrying" for ever. Should the
-- mailer have sent it (or given up on it) already, its mail.sent (mail.failed) still says so.
-- NOT VALID: the check only widens, so every existing row passes; no scan under the lock.
ALTER TABLE invitations DROP CONSTRAINT invitations_delivery_check;
ALTER TABLE invitations ADD CONSTRAINT invitations_delivery_check
    CHECK (delivery IN ('queued', 'retrying', 'sent', 'failed', 'withdrawn')) NOT VALID;
