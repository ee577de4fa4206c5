-- The audit log (docs/design/review.md, "Accounts, sessions, audit"): one row
-- per analyst action, written in the action's own transaction, each chained
-- to the one before by a SHA-256 hash. `vigil review audit verify` recomputes
-- the chain.

CREATE TABLE audit_log (
    -- Consecutive, from 1: a missing number is a deleted row.
    id             bigint PRIMARY KEY,
    at             timestamptz NOT NULL,
    actor          text NOT NULL,
    action         text NOT NULL,
    case_id        bigint,
    transaction_id text,
    detail         jsonb NOT NULL,
    -- Hex SHA-256 of the previous row's hash and this row's canonical JSON.
    prev_hash      text NOT NULL,
    hash           text NOT NULL
);
CREATE INDEX audit_log_by_case ON audit_log (case_id, id) WHERE case_id IS NOT NULL;

-- The chain's head: one row, locked by every append, so appends take turns
-- and the head says where the chain ends (a cut tail shows).
CREATE TABLE audit_head (
    one       boolean PRIMARY KEY DEFAULT true CHECK (one),
    last_id   bigint NOT NULL,
    last_hash text NOT NULL
);
INSERT INTO audit_head (last_id, last_hash) VALUES (0, repeat('0', 64));

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
