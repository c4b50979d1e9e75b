-- Integration keys for the public JSON API: several live at once (rotation without
-- downtime), each with its own scopes. Only the sha256 of a key is stored; `prefix` (its
-- first characters) lets a person tell keys apart in the list.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    scopes       text[] NOT NULL,
    key_hash     text NOT NULL UNIQUE,
    prefix       text NOT NULL,
    created_by   uuid,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_live ON api_keys (created_at DESC, id DESC) WHERE revoked_at IS NULL;

-- Staff: portals, invitations and clients, not settings, staff management or keys.
ALTER TABLE users DROP CONSTRAINT users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check
    CHECK (role IN ('administrator', 'staff', 'client'));
-- The last-administrator check reads the active administrators.
CREATE INDEX users_active_administrators ON users (id)
    WHERE role = 'administrator' AND NOT disabled;
