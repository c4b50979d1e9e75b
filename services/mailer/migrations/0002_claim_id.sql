-- Who claimed a row: a worker whose claim failed mid-air (the database went away as it
-- answered) can hand that row back at once instead of leaving it 'sending' until the
-- stuck-row sweep.
ALTER TABLE deliveries ADD COLUMN claim_id uuid;
CREATE INDEX deliveries_claim ON deliveries (claim_id) WHERE status = 'sending';
