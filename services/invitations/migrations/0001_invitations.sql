-- Read-only replica of the portals this service needs (title, slug, status), kept from
-- portal.created / portal.updated; a row only moves forward in revision.
CREATE TABLE portals (
    portal_id  uuid PRIMARY KEY,
    slug       text NOT NULL,
    title      text NOT NULL,
    status     text NOT NULL CHECK (status IN ('active', 'pending', 'archived')),
    revision   bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Not unique: during a slug swap the replica may briefly hold the old and the new owner.
CREATE INDEX portals_slug ON portals (slug);

CREATE TABLE invitations (
    id               uuid PRIMARY KEY,
    email            text NOT NULL,
    email_lower      text NOT NULL,
    portal_id        uuid NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'accepted', 'revoked', 'expired')),
    token_hash       text NOT NULL UNIQUE,
    sent_at          timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    send_count       integer NOT NULL DEFAULT 1,
    delivery         text NOT NULL DEFAULT 'queued' CHECK (delivery IN ('queued', 'sent', 'failed')),
    delivery_error   text,
    last_mail_id     uuid,
    sub_client       boolean,
    invited_by       text,
    idempotency_key  text UNIQUE,
    accepted_user_id uuid,
    accepted_at      timestamptz,
    revoked_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (expires_at > sent_at)
);

-- Two concurrent invitations of one email to one portal can't both be pending.
CREATE UNIQUE INDEX invitations_one_pending
    ON invitations (portal_id, email_lower) WHERE status = 'pending';
-- The list, newest first, unfiltered / by status / by portal (and status).
CREATE INDEX invitations_newest ON invitations (created_at DESC, id DESC);
CREATE INDEX invitations_status_newest ON invitations (status, created_at DESC, id DESC);
CREATE INDEX invitations_portal_status_newest
    ON invitations (portal_id, status, created_at DESC, id DESC);
CREATE INDEX invitations_portal_newest ON invitations (portal_id, created_at DESC, id DESC);
-- The expiry sweep.
CREATE INDEX invitations_due ON invitations (expires_at) WHERE status = 'pending';

CREATE TABLE settings (
    id                     boolean PRIMARY KEY DEFAULT true CHECK (id),
    invitation_expiry_days integer NOT NULL DEFAULT 14
                           CHECK (invitation_expiry_days IN (7, 14, 21, 30))
);
INSERT INTO settings (id) VALUES (true);
