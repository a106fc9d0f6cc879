-- What the next daemon needs to go on with an inbound call it adopts while managers' phones ring for it
-- (bridged.calls.reconcile): the ring plan (bridged.routing) as manager ids, one array per step, and how
-- many of its steps have been rung; and the caller's keyed hash (bridged.callers), to remember who talks
-- to them. Never a number. The key is emptied as the row ends: the callers remembered are those of
-- inbound_sticky, within inbound.sticky_days.
ALTER TABLE calls ADD COLUMN ring_plan jsonb CHECK (jsonb_typeof(ring_plan) = 'array');
ALTER TABLE calls ADD COLUMN ring_rung smallint CHECK (ring_rung >= 0);
ALTER TABLE calls ADD COLUMN caller_key text CHECK (caller_key ~ '^[0-9a-f]{64}$');
