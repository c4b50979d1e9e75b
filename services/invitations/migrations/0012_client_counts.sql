-- The Invitations screen's tab counts (repository.status_counts_query): only client
-- invitations, with what the counts filter on, so that each count is an index-only scan
-- instead of reading every invitation's row (100,000 invitations: 200 ms a page before).
CREATE INDEX invitations_client_counts ON invitations (status, portal_id, expires_at)
    WHERE staff_role IS NULL;
