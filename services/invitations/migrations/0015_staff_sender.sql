-- Who sent a staff invitation, by user id (Users → Invite Staff; the gateway names the
-- administrator whose session asked). When identity says that person was disabled,
-- erased or given a role that can't invite staff, their open staff invitations are
-- revoked (handlers/staff_sender.py): an invitation never outlives its sender's right to
-- send it. A client's invitation records none: it stays valid through staff turnover.
-- Rows from before this migration have none either, and keep working as they did
-- (CHANGELOG, SECURITY.md "Staff invitations").
ALTER TABLE invitations ADD COLUMN invited_by_id uuid;
-- NOT VALID (docs/deploying.md "Expand, then contract"): every existing row passes, the
-- column being new, and new writes are checked; no scan under the table's lock.
ALTER TABLE invitations ADD CONSTRAINT invitations_sender_staff_only
    CHECK (invited_by_id IS NULL OR staff_role IS NOT NULL) NOT VALID;
-- A sender's open staff invitations, found at once when they lose the right.
CREATE INDEX invitations_staff_by_sender ON invitations (invited_by_id)
    WHERE invited_by_id IS NOT NULL AND status IN ('pending', 'expired');
