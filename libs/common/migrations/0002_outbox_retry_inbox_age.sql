-- A row the broker returned as unroutable (no queue bound yet) stays pending and is tried
-- again after a growing pause, instead of blocking the rows behind it.
ALTER TABLE outbox ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN next_attempt_at timestamptz;

-- Inbox rows older than the retention window are pruned; this finds them without a scan.
CREATE INDEX inbox_received_at ON inbox (received_at);
