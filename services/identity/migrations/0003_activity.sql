-- The Activity log: every change a staff member or an integration key made, built from
-- the events that carry their actor (docs/design.md "Activity"). One row per event: the
-- event id is the key, so a redelivered event adds nothing.
CREATE TABLE activity (
    id           uuid PRIMARY KEY,
    occurred_at  timestamptz NOT NULL,
    action       text NOT NULL,
    actor_type   text NOT NULL CHECK (actor_type IN ('user', 'key')),
    actor_id     text NOT NULL,
    actor_name   text NOT NULL,
    object_type  text NOT NULL,
    object_id    text,
    object_label text NOT NULL DEFAULT '',
    portal_id    uuid,
    details      jsonb NOT NULL DEFAULT '{}'
);
-- Newest first, alone or within one filter, in keyset order.
CREATE INDEX activity_newest ON activity (occurred_at DESC, id DESC);
CREATE INDEX activity_by_actor ON activity (actor_id, occurred_at DESC, id DESC);
CREATE INDEX activity_by_action ON activity (action, occurred_at DESC, id DESC);
CREATE INDEX activity_by_portal ON activity (portal_id, occurred_at DESC, id DESC)
    WHERE portal_id IS NOT NULL;
