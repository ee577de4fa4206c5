-- Signed webhooks on case opened and case resolved (docs/design/review.md,
-- "Webhooks"): one row per event and receiver, written in the transaction
-- that opened or closed the case, delivered at least once with retries.
CREATE TABLE webhook_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The receiver's name in `[[review.webhooks]]`.
    endpoint        text NOT NULL,
    event           text NOT NULL CHECK (event IN ('case.opened', 'case.resolved')),
    case_id         bigint NOT NULL REFERENCES cases (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    delivered_at    timestamptz
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at, id) WHERE delivered_at IS NULL;
