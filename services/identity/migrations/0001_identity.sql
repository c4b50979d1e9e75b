-- Users: one account per email, compared case-insensitively.
CREATE TABLE users (
    id                    uuid PRIMARY KEY,
    email                 text NOT NULL,
    role                  text NOT NULL CHECK (role IN ('administrator', 'client')),
    password_hash         text NOT NULL,
    disabled              boolean NOT NULL DEFAULT false,
    created_by_invitation uuid,
    created_at            timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_lower ON users (lower(email));
CREATE INDEX users_keyset ON users (created_at, id);
CREATE INDEX users_created_by_invitation ON users (created_by_invitation)
    WHERE created_by_invitation IS NOT NULL;

-- Sessions: only the sha256 of the token is stored. expires_at is the absolute limit;
-- the idle limit is computed from last_seen_at.
CREATE TABLE sessions (
    id           uuid PRIMARY KEY,
    token_hash   text NOT NULL UNIQUE,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);
CREATE INDEX sessions_user_live ON sessions (user_id) WHERE revoked_at IS NULL;

-- Login settings: exactly one row.
CREATE TABLE login_settings (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    login_redirect boolean NOT NULL DEFAULT false,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO login_settings (id) VALUES (true);

-- Password resets: single-use tokens, stored as sha256 only.
CREATE TABLE password_resets (
    id         uuid PRIMARY KEY,
    token_hash text NOT NULL UNIQUE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX password_resets_user ON password_resets (user_id, created_at);
