-- What portals heard of an account from identity (the occurred_at of its latest
-- identity.user.disabled, .enabled and .erased), so that a grant that comes after the news
-- (an invitation.accepted relayed late, the accept saga's step, the editor) can't put a
-- disabled or erased person back on a portal (domain.may_grant). The id alone: nothing
-- here names the person.
CREATE TABLE accounts (
    user_id     uuid PRIMARY KEY,
    disabled_at timestamptz,
    enabled_at  timestamptz,
    erased_at   timestamptz
);
