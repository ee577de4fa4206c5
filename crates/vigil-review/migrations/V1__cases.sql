-- Cases and the payments they hold (docs/design/review.md).

CREATE TABLE cases (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The entity that owns the case: `card` and the card id, by default.
    entity_kind   text NOT NULL,
    entity_id     text NOT NULL,
    status        text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    queue         text NOT NULL DEFAULT 'default',
    priority      integer NOT NULL DEFAULT 0,
    -- Payments in the case, and the highest risk score among them.
    payments      integer NOT NULL DEFAULT 0,
    top_score     double precision NOT NULL DEFAULT 0,
    assignee      text,
    -- Who holds the case now, and until when: a claim is a lease.
    lease_holder  text,
    lease_until   timestamptz,
    snoozed_until timestamptz,
    escalated     boolean NOT NULL DEFAULT false,
    opened_at     timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    closed_at     timestamptz,
    CHECK ((lease_holder IS NULL) = (lease_until IS NULL))
);

-- One open case per entity: a fact of the database, not a habit of the code.
CREATE UNIQUE INDEX cases_one_open_per_entity ON cases (entity_kind, entity_id) WHERE status = 'open';
-- Claim-next: the open cases of a queue, most urgent first.
CREATE INDEX cases_claimable ON cases (queue, priority DESC, opened_at, id) WHERE status = 'open';
-- An entity's history.
CREATE INDEX cases_by_entity ON cases (entity_kind, entity_id, opened_at DESC);

CREATE TABLE payments (
    -- The exactly-once key: a redelivered decision finds its row here.
    transaction_id text PRIMARY KEY,
    case_id        bigint NOT NULL REFERENCES cases (id),
    -- The decision record as it was published: the frozen snapshot (event,
    -- features, reasons, rules and model versions, score and contributions).
    decision       jsonb NOT NULL,
    amount         numeric NOT NULL CHECK (amount >= 0),
    currency       text NOT NULL,
    score          double precision NOT NULL,
    event_at       timestamptz NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    -- The money is held until then; the pipeline's policy resolves it after.
    hold_until     timestamptz NOT NULL
);

CREATE INDEX payments_by_case ON payments (case_id, received_at);
