-- One row per mail job (mail.requested), keyed by the job's mail_id so a job delivered
-- twice is recorded once. ``context`` holds the link with its one-time token: it is
-- nulled as soon as the delivery is sent or has failed for good.
CREATE TABLE deliveries (
    mail_id         uuid PRIMARY KEY,
    template        text NOT NULL,
    to_address      text NOT NULL,
    ref_type        text NOT NULL,
    ref_id          uuid NOT NULL,
    context         jsonb,
    correlation_id  text,
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_at      timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    CHECK (status IN ('queued', 'sending') OR context IS NULL)
);

-- The senders' work queue: due rows only.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'queued';
-- Crash recovery looks for rows left in 'sending'.
CREATE INDEX deliveries_sending ON deliveries (claimed_at) WHERE status = 'sending';
