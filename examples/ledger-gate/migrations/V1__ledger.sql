-- The reference ledger gate's schema (examples/ledger-gate/README.md).

-- One account per card (or account, or customer) and currency. `held` is the
-- money on pending holds, `posted` the money captured. Writers compare and
-- set `version` (optimistic concurrency): no lock is held across a decision.
CREATE TABLE gate_accounts (
    id       text PRIMARY KEY,
    currency text NOT NULL,
    held     numeric NOT NULL DEFAULT 0 CHECK (held >= 0),
    posted   numeric NOT NULL DEFAULT 0 CHECK (posted >= 0),
    version  bigint NOT NULL DEFAULT 0
);

-- One row per payment, made by whichever of its authorisation, decision or
-- resolution arrives first (the topics do not order one against another).
CREATE TABLE gate_holds (
    transaction_id text PRIMARY KEY,
    -- `awaiting`: a decision or resolution came before its authorisation;
    -- `pending`: the money is held; then exactly one end.
    state          text NOT NULL CHECK (state IN ('awaiting', 'pending', 'posted', 'voided', 'expired')),
    account_id     text REFERENCES gate_accounts (id),
    amount         numeric CHECK (amount >= 0),
    currency       text,
    placed_at      timestamptz,
    expires_at     timestamptz,
    decision       text CHECK (decision IN ('approve', 'review', 'decline')),
    decision_at    timestamptz,
    resolution     text CHECK (resolution IN ('release', 'stop')),
    resolution_at  timestamptz,
    -- What ended the hold: `approve` or `release` (posted), `decline` or
    -- `stop` (voided), `expiry` (expired).
    ended_by       text CHECK (ended_by IN ('approve', 'release', 'decline', 'stop', 'expiry')),
    ended_at       timestamptz,
    CHECK ((state IN ('posted', 'voided', 'expired')) = (ended_at IS NOT NULL)),
    CHECK (state = 'awaiting' OR (account_id IS NOT NULL AND amount IS NOT NULL)),
    -- Never posted before its decision: a posted hold has its `approve` or
    -- its `release` recorded, and said what posted it.
    CHECK (state <> 'posted' OR (ended_by = 'approve' AND decision = 'approve')
                             OR (ended_by = 'release' AND resolution = 'release')),
    CHECK (state <> 'voided' OR (ended_by = 'decline' AND decision = 'decline')
                             OR (ended_by = 'stop' AND resolution = 'stop')),
    CHECK (state <> 'expired' OR ended_by = 'expiry')
);

CREATE INDEX gate_holds_due ON gate_holds (expires_at) WHERE state = 'pending';
