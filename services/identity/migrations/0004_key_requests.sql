-- The request that made a key (the Create Key form's one-time id): a form sent twice
-- (a reload after Create Key) makes one key, not two.
ALTER TABLE api_keys ADD COLUMN request_id text CHECK (length(request_id) BETWEEN 1 AND 100);
CREATE UNIQUE INDEX api_keys_request_id ON api_keys (request_id) WHERE request_id IS NOT NULL;
