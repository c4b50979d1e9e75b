-- The caps per integration and per API key counted in minutes, not one row per request:
-- the count read before each run or API request was up to the cap's rows (10,000 index
-- entries, 2 to 8 ms, for a key near INVITATIONS_REQUESTS_PER_KEY_HOUR), now at most 61.
-- What sender_requests held is carried over. sender_requests came in this release's
-- 0013 (never in a released version), so it goes at once.
CREATE TABLE sender_counts (
    sender text NOT NULL,
    minute timestamptz NOT NULL,
    requests integer NOT NULL CHECK (requests > 0),
    PRIMARY KEY (sender, minute)
);
INSERT INTO sender_counts (sender, minute, requests)
SELECT sender, date_trunc('minute', at), count(*) FROM sender_requests GROUP BY 1, 2;
DROP TABLE sender_requests;
