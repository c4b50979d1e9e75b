-- The retention sweep (INVITATIONS_RETENTION_DAYS): an accepted or revoked invitation's
-- Personal Message is cleared some time after it closed (no Resend can use it again).
-- Only the rows still holding one are indexed, so the index stays small.
CREATE INDEX invitations_message_closed ON invitations ((coalesce(accepted_at, revoked_at)))
    WHERE personal_message IS NOT NULL AND status IN ('accepted', 'revoked');
