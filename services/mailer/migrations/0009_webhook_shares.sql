-- The webhook workers claim the oldest due delivery of an endpoint that doesn't already
-- hold its share of them (services/mailer/webhooks/repository.py claim_due): each
-- endpoint's due deliveries in order, and each endpoint's deliveries under way.
CREATE INDEX webhook_deliveries_due_by_endpoint ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'queued';
CREATE INDEX webhook_deliveries_sending_by_endpoint ON webhook_deliveries (endpoint_id)
    WHERE status = 'sending';
