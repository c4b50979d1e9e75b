-- Staff invitations (issue 15, Users → Invite Staff): the same rows, links, caps and
-- accept claim as a client's invitation, but with a role and no portal. `staff_role` is
-- NULL for every client invitation (which keeps its portal); a staff invitation has a
-- role and no portal. Their events are invitation.staff.*, so invitation.* consumers
-- (portals grants from invitation.accepted) never see a null portal_id.
ALTER TABLE invitations ALTER COLUMN portal_id DROP NOT NULL;
ALTER TABLE invitations
    ADD COLUMN staff_role text CHECK (staff_role IN ('administrator', 'staff'));
ALTER TABLE invitations ADD CONSTRAINT invitations_portal_or_staff
    CHECK ((staff_role IS NULL) = (portal_id IS NOT NULL));
-- One pending staff invitation per address (inviting again resends it), as
-- invitations_one_pending is per address and portal.
CREATE UNIQUE INDEX invitations_one_pending_staff
    ON invitations (email_lower) WHERE status = 'pending' AND staff_role IS NOT NULL;
-- The Users screen's list: the open staff invitations, newest first.
CREATE INDEX invitations_staff_newest ON invitations (created_at DESC, id DESC)
    WHERE staff_role IS NOT NULL;
