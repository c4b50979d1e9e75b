-- An acceptance under way: the link is spent (a revoke, a resend or the expiry sweep can
-- no longer take the invitation) before any account or access exists, so a revoke that
-- loses the race leaves nothing behind. `accept_claim` names the one request driving it;
-- after `accept_claim_until` the same link may take it over (a gateway that died midway).
-- `accept_reopenable`: the claim came straight from 'pending', so its driver may hand the
-- invitation back to 'pending' when it knows nothing was made (a refused password).
ALTER TABLE invitations DROP CONSTRAINT invitations_status_check;
ALTER TABLE invitations ADD CONSTRAINT invitations_status_check
    CHECK (status IN ('pending', 'accepting', 'accepted', 'revoked', 'expired'));
ALTER TABLE invitations
    ADD COLUMN accept_claim uuid,
    ADD COLUMN accept_claim_until timestamptz,
    ADD COLUMN accept_reopenable boolean NOT NULL DEFAULT false;
