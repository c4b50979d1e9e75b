-- Transactional outbox: a handler writes its events here in the same transaction as its
-- change; the relay publishes them with publisher confirms and marks them published.
-- seq orders rows written in one transaction (they share created_at).
CREATE TABLE outbox (
    seq           bigserial NOT NULL,
    id            uuid PRIMARY KEY,
    exchange      text NOT NULL CHECK (exchange IN ('events', 'mail')),
    routing_key   text NOT NULL,
    body          bytea NOT NULL,
    correlation_id text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;

-- Inbox: ids of the events this service has applied, written in the same transaction as
-- the effect, so a redelivered event does nothing twice.
CREATE TABLE inbox (
    event_id    uuid PRIMARY KEY,
    event_type  text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
