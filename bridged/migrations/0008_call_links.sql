-- Signed click-to-call links (GET /c): a link places at most one call. The row is keyed by the SHA-256 of
-- the link's signature and claimed before the call is placed, as an Idempotency-Key is; opening the link
-- again shows the call it placed (call_id) or the refusal it got (status, response) instead of ringing
-- again. status is NULL while the first request is still placing the call. capability_hash is the
-- SHA-256 of the capability the link's page follows the call with (no capability is stored). Rows are
-- deleted once the link has expired and the capability is void.
CREATE TABLE call_links (
    sig_hash        text PRIMARY KEY,
    order_id        text NOT NULL,
    manager_id      text NOT NULL,
    expires_at      timestamptz NOT NULL,
    capability_hash text NOT NULL UNIQUE,
    call_id         text,
    status          integer,
    response        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX call_links_expires_idx ON call_links (expires_at);
