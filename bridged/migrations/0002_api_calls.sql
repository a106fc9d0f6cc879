-- HTTP-triggered calls: Idempotency-Key replay and the webhook outbox.

-- A retried POST with the same key (per token) returns the first answer instead of ringing twice.
-- status is NULL while the first request is still being handled.
CREATE TABLE idempotency_keys (
    principal    text NOT NULL,
    key          text NOT NULL,
    request_hash text NOT NULL,
    status       integer,
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);

CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Every call state change, delivered to the configured webhook with retries. Written by the call
-- workers, read by the dispatcher: a slow receiver never holds a call up.
CREATE TABLE webhook_outbox (
    id              bigserial PRIMARY KEY,
    call_id         text NOT NULL,
    payload         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    failed_at       timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_outbox_due_idx ON webhook_outbox (next_attempt_at, id)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
