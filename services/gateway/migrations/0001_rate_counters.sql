-- Rate-limit counters every gateway replica shares: one row per key per fixed window.
-- UNLOGGED: no WAL for a row written on every log in, and nothing worth recovering; a
-- crash (or a failover to a standby, which has no UNLOGGED data) starts every count at
-- zero. The key is a SHA-256 of scope and subject, so no email or client address is
-- stored readable and every key has the same small size.
CREATE UNLOGGED TABLE rate_counters (
    key          bytea       NOT NULL,
    window_start bigint      NOT NULL,  -- epoch seconds, a multiple of the window
    hits         integer     NOT NULL,
    expires_at   timestamptz NOT NULL,  -- once past, the row counts for nothing
    PRIMARY KEY (key, window_start)
);

CREATE INDEX rate_counters_expires_at ON rate_counters (expires_at);
