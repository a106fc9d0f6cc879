-- Inbound calls (issue 13): customers calling the shop's numbers are rung through to a manager.
ALTER TABLE calls DROP CONSTRAINT calls_direction_check;
ALTER TABLE calls ADD CONSTRAINT calls_direction_check CHECK (direction IN ('phone', 'api', 'inbound'));

-- A caller without an order has none; a missed call from them has no manager either. Calls a manager
-- or the shop placed always name both.
ALTER TABLE calls ALTER COLUMN order_id DROP NOT NULL;
ALTER TABLE calls ALTER COLUMN manager_id DROP NOT NULL;
ALTER TABLE calls ADD CONSTRAINT calls_outbound_named
    CHECK (direction = 'inbound' OR (order_id IS NOT NULL AND manager_id IS NOT NULL));

-- What names an inbound caller without an order: letters derived from the keyed hash of their number
-- (bridged.callers), never the number, never digits.
ALTER TABLE calls ADD COLUMN caller_ref text CHECK (caller_ref ~ '^[A-Z]{1,24}$');

-- GET /v1/calls?outcome=missed and the missed calls of /ops/, newest first.
CREATE INDEX calls_missed_idx ON calls (requested_at DESC, id DESC) WHERE outcome = 'missed';

-- Who last talked to a caller: by the HMAC-SHA256 of their number under inbound.secret (the key is in the
-- config file only: without it the hashes cannot be matched against numbers). Rows older than
-- inbound.sticky_days are deleted as new ones are written.
CREATE TABLE inbound_sticky (
    caller_key  text PRIMARY KEY CHECK (caller_key ~ '^[0-9a-f]{64}$'),
    manager_id  text NOT NULL,
    order_id    text,
    last_at     timestamptz NOT NULL
);
CREATE INDEX inbound_sticky_last_at_idx ON inbound_sticky (last_at);
