-- Verdicts and resolutions (docs/design/review.md, "Resolutions, exactly once").

ALTER TABLE payments
    ADD COLUMN verdict    text CHECK (verdict IN ('fraud', 'genuine')),
    ADD COLUMN verdict_by text,
    ADD COLUMN verdict_at timestamptz,
    -- What happens to the money: set once, with the resolution row.
    ADD COLUMN resolution text CHECK (resolution IN ('release', 'stop'));

-- The payments whose hold runs out next, among those not resolved yet.
CREATE INDEX payments_due ON payments (hold_until) WHERE resolution IS NULL;

-- The outbox: one row per resolved payment, numbered in the order written;
-- the publisher sends them to the resolutions topic in that order.
CREATE TABLE resolutions (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id text NOT NULL UNIQUE REFERENCES payments (transaction_id),
    case_id        bigint NOT NULL REFERENCES cases (id),
    action         text NOT NULL CHECK (action IN ('release', 'stop')),
    -- The analyst, or `deadline` when the hold ran out first.
    resolved_by    text NOT NULL,
    verdict        text CHECK (verdict IN ('fraud', 'genuine')),
    resolved_at    timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz
);

CREATE INDEX resolutions_unpublished ON resolutions (seq) WHERE published_at IS NULL;
