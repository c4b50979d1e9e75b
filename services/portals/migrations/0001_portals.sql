-- Portals and their access list (primary client + sub-clients).
CREATE TABLE portals (
    id           uuid PRIMARY KEY,
    title        text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    slug         text NOT NULL CHECK (
                     char_length(slug) <= 80 AND slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
    content      text NOT NULL DEFAULT '' CHECK (char_length(content) <= 100000),
    -- Rendered and sanitised at write time, so reads never run the renderer.
    content_html text NOT NULL DEFAULT '',
    status       text NOT NULL CHECK (status IN ('active', 'pending', 'archived')),
    revision     integer NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT portals_slug_key UNIQUE (slug)
);
-- Keyset pagination: newest first, id as the tie-breaker.
CREATE INDEX portals_created ON portals (created_at DESC, id DESC);
CREATE INDEX portals_status_created ON portals (status, created_at DESC, id DESC);

-- user_id is not a foreign key: users live in the identity service (see repository.py).
CREATE TABLE access (
    portal_id  uuid NOT NULL REFERENCES portals (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL,
    role       text NOT NULL CHECK (role IN ('client', 'sub_client')),
    grant_key  text,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (portal_id, user_id)
);
-- At most one primary client per portal, whatever races happen above.
CREATE UNIQUE INDEX access_one_client ON access (portal_id) WHERE role = 'client';
CREATE INDEX access_user ON access (user_id);

-- Grants already applied under a key (an invitation id): the same key never grants twice,
-- even after the access was later revoked.
CREATE TABLE applied_grants (
    grant_key  text PRIMARY KEY,
    portal_id  uuid NOT NULL,
    user_id    uuid NOT NULL,
    role       text NOT NULL CHECK (role IN ('client', 'sub_client')),
    applied_at timestamptz NOT NULL DEFAULT now()
);
