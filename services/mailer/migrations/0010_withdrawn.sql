-- Emails withdrawn by invitations (mail.withdraw: their invitation was revoked, resent,
-- reminded, accepted, expired or erased before the email went). A delivery still queued
-- becomes 'withdrawn', its context (the link) gone at once; one already 'sending'
-- finishes. Each withdrawn mail id is kept here for MAILER_RETENTION_DAYS, so a job that
-- arrives after its withdrawal (two messages, no order between them) is recorded
-- withdrawn and never sent, and a delivery the senders hand back to the queue (a retry,
-- crash recovery) is never claimed again.
-- NOT VALID (docs/deploying.md "Expand, then contract"): the check only widens, so every
-- existing row passes, and new writes are checked; no scan under the table's lock.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'withdrawn')) NOT VALID;

CREATE TABLE withdrawn_mails (
    mail_id      uuid PRIMARY KEY,
    withdrawn_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX withdrawn_mails_age ON withdrawn_mails (withdrawn_at);
