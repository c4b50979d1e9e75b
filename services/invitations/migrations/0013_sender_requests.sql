-- invitation.requested taken from each broker user (an integration) in the last hour, for
-- the cap on requests per integration (INVITATIONS_REQUESTS_PER_INTEGRATION_HOUR): a leaked or
-- looping integration can't send unbounded first invitations. Rows out of the hour are
-- deleted by the hourly retention task (handlers/sweep.clear_closed_once).
CREATE TABLE sender_requests (
    sender text NOT NULL,
    at timestamptz NOT NULL
);
CREATE INDEX sender_requests_by_sender ON sender_requests (sender, at);
