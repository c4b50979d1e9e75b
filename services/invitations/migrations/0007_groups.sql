-- Several portals, one invitation (issue 20): one person invited to several portals at
-- once gets one email with one link. Each portal keeps its own invitation row (its
-- Invitations screen, Resend / Revoke and invitation.accepted work as for any other);
-- the rows sent together share a group and, while they are sent together, one link
-- (the same token_hash). Accepting that link accepts every pending one whose portal is
-- still Active. `portal_ids`: the portals in the order they were asked for;
-- `idempotency_key`: the request's key (the rows' events carry it).
CREATE TABLE invitation_groups (
    id              uuid PRIMARY KEY,
    email_lower     text NOT NULL,
    portal_ids      uuid[] NOT NULL CHECK (cardinality(portal_ids) BETWEEN 1 AND 20),
    idempotency_key text UNIQUE CHECK (char_length(idempotency_key) <= 200),
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER TABLE invitations ADD COLUMN group_id uuid REFERENCES invitation_groups (id);
CREATE INDEX invitations_group ON invitations (group_id, id) WHERE group_id IS NOT NULL;

-- A link is one invitation's, unless it is a group's: then it is each of its rows'.
ALTER TABLE invitations DROP CONSTRAINT invitations_token_hash_key;
CREATE UNIQUE INDEX invitations_token_single ON invitations (token_hash) WHERE group_id IS NULL;
CREATE INDEX invitations_token ON invitations (token_hash);

-- Every link ever sent, per invitation it was sent for (a group's link: one row each).
ALTER TABLE invitation_links DROP CONSTRAINT invitation_links_pkey;
ALTER TABLE invitation_links ADD PRIMARY KEY (token_hash, invitation_id);
