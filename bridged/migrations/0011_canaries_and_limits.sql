-- Canary orders and per-manager limits (issue 14).

-- A canary: a number the shop owns, planted as a fake customer's phone in one manager's segment (or a
-- team's). The number itself is not kept: its HMAC-SHA256 under inbound.secret (bridged.canaries), and
-- its last two digits for an admin to tell canaries apart. key_check says which key made number_key
-- (a changed inbound.secret leaves the canaries unmatched: bridged warns).
CREATE TABLE canaries (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    number_key  text NOT NULL UNIQUE CHECK (number_key ~ '^[0-9a-f]{64}$'),
    last_digits text NOT NULL CHECK (last_digits ~ '^[0-9]{2}$'),
    key_check   text NOT NULL CHECK (key_check ~ '^[0-9a-f]{16}$'),
    manager_id  text,
    team        text,
    order_id    text NOT NULL,
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    CHECK (manager_id IS NOT NULL OR team IS NOT NULL)
);

-- An inbound call to a canary number (the alarm); its manager_id is the canary's manager.
ALTER TABLE calls ADD COLUMN canary boolean NOT NULL DEFAULT false;

-- Every call attempt a manager makes (phone, API, link), accepted or refused: what the budgets are
-- counted on (the same after a restart, and across daemons sharing the database). Never the digits a
-- manager typed: an order id only when it named a known order, else the code's length and shape.
CREATE TABLE manager_attempts (
    id          bigserial PRIMARY KEY,
    manager_id  text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    -- 'accepted', or the refusal (unknown_order, denied, invalid_code, rate_limited, ...)
    outcome     text NOT NULL,
    -- the order, when the code named one the shop knows (accepted, denied, invalid_phone)
    order_id    text,
    code_length integer NOT NULL CHECK (code_length >= 0),
    -- well_formed (matches orders.code_pattern), phone_like (7+ digits, + or separators), digits, other
    code_shape  text NOT NULL
);
CREATE INDEX manager_attempts_manager_at_idx ON manager_attempts (manager_id, at DESC);
CREATE INDEX manager_attempts_at_idx ON manager_attempts (at);

-- The last abuse.suspected webhook per manager and budget: at most one per window.
CREATE TABLE limit_alerts (
    manager_id text NOT NULL,
    budget     text NOT NULL,
    sent_at    timestamptz NOT NULL,
    PRIMARY KEY (manager_id, budget)
);
