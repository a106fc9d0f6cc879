-- Several Asterisk nodes: the node a call's channels are on (ari[].name); NULL for rows written before,
-- which belong to the first node.
ALTER TABLE calls ADD COLUMN node text;

-- Which bridged daemon serves the calls of each Stasis application (bridged.leases). Every daemon holds
-- the lease of its own application and renews it every 2 s for 6 s, by the database's clock; a lease that
-- has expired while its application still has open calls is taken over by one survivor (a conditional
-- UPDATE: one winner), which adopts those calls until they end or the owner asks for them back
-- (handback), then gives the lease back to the owner.
CREATE TABLE app_leases (
    ari_app text PRIMARY KEY,
    -- the application of the daemon holding the lease: ari_app itself, or the adopter's
    holder text NOT NULL,
    -- which process holds it (the application, host and process id, start time), so that a second daemon
    -- with the same application waits instead of serving it too
    holder_instance text NOT NULL,
    expires_at timestamptz NOT NULL,
    -- the owner is back and wants its lease (set by the owner while an adopter holds it), or the adopter
    -- gave the lease back and it waits for its owner (no other survivor takes it meanwhile)
    handback boolean NOT NULL DEFAULT false
);
