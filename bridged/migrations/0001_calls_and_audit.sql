-- One row per call attempt. No customer phone number is ever stored here: the order id is
-- the only link to the customer, resolved again from the shop's database when needed.
CREATE TABLE calls (
    id                  text PRIMARY KEY,
    order_id            text NOT NULL,
    manager_id          text NOT NULL,
    direction           text NOT NULL CHECK (direction IN ('phone', 'api')),
    state               text NOT NULL,
    outcome             text,
    hangup_cause        integer,
    requested_at        timestamptz NOT NULL DEFAULT now(),
    answered_at         timestamptz,
    ended_at            timestamptz,
    recording_name      text,
    manager_channel_id  text,
    customer_channel_id text,
    bridge_id           text,
    ended_by            text
);

CREATE INDEX calls_requested_at_idx ON calls (requested_at DESC, id DESC);
CREATE INDEX calls_open_idx ON calls (state) WHERE state <> 'ended';
CREATE INDEX calls_manager_idx ON calls (manager_id, requested_at DESC);
CREATE INDEX calls_order_idx ON calls (order_id, requested_at DESC);

-- Who did what, when, with which outcome and why.
CREATE TABLE audit (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL,
    call_id   text REFERENCES calls (id) ON DELETE SET NULL,
    order_id  text,
    outcome   text NOT NULL,
    reason    text,
    details   jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX audit_at_idx ON audit (at DESC, id DESC);
CREATE INDEX audit_call_idx ON audit (call_id);
