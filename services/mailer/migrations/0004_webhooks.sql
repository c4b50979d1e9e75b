-- Webhook endpoints: where to POST which lifecycle events. The signing secret must stay
-- usable (it signs every delivery), so it is kept encrypted under WEBHOOK_SECRET_KEY
-- (Fernet), never in the clear. After a rotation the previous secret keeps signing
-- alongside the new one until previous_until.
CREATE TABLE webhook_endpoints (
    id              uuid PRIMARY KEY,
    url             text NOT NULL,
    events          text[] NOT NULL CHECK (cardinality(events) > 0),
    secret_sealed   text NOT NULL,
    previous_sealed text,
    previous_until  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_events ON webhook_endpoints USING gin (events);

-- One row per (endpoint, event): at least once, recorded once however often the event
-- arrives. ``payload`` is the exact body that is signed and sent (no secret in it).
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    payload          text NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'sending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- The retry horizon runs from here: queueing, or a Redeliver.
    queued_at        timestamptz NOT NULL DEFAULT now(),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    claimed_at       timestamptz,
    last_attempt_at  timestamptz,
    response_code    integer,
    duration_ms      integer,
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'queued';
CREATE INDEX webhook_deliveries_sending ON webhook_deliveries (claimed_at)
    WHERE status = 'sending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);
