-- The key of the latest request that sent this invitation a new link (a form's own key, or
-- an API caller's Idempotency-Key when inviting again): the same request posted again (a
-- double click, the back button, a retry) finds it here and sends nothing. The invitation's
-- idempotency_key stays the one that made it.
ALTER TABLE invitations ADD COLUMN last_request_key text;
