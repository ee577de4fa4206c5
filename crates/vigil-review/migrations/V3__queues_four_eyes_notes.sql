-- Queues, four-eyes, notes and tags (docs/design/review.md, step 2).

ALTER TABLE payments
    -- The queue the payment matched at ingest, and that queue's priority
    -- (`default`, 0, when it matched none). A case is in the queue of
    -- highest priority among its payments not resolved yet.
    ADD COLUMN queue          text NOT NULL DEFAULT 'default',
    ADD COLUMN queue_priority integer NOT NULL DEFAULT 0,
    -- A rule (not a shadow) asked for `decline`: releasing the money may
    -- need a second analyst.
    ADD COLUMN wanted_decline boolean NOT NULL DEFAULT false,
    -- A verdict waiting for a second analyst (four-eyes): who proposed it.
    ADD COLUMN proposed       text CHECK (proposed IN ('fraud', 'genuine')),
    ADD COLUMN proposed_by    text,
    ADD COLUMN proposed_at    timestamptz,
    ADD COLUMN confirmed_by   text,
    ADD CONSTRAINT payments_proposal_has_proposer CHECK ((proposed IS NULL) = (proposed_by IS NULL));

-- Verdicts waiting for a second analyst, oldest first.
CREATE INDEX payments_proposed ON payments (proposed_at) WHERE proposed IS NOT NULL AND resolution IS NULL;
-- Search by the event's card and terminal.
CREATE INDEX payments_by_card ON payments ((decision -> 'event' ->> 'card_id'));
CREATE INDEX payments_by_terminal ON payments ((decision -> 'event' ->> 'terminal_id'));

ALTER TABLE resolutions
    -- The second analyst of a four-eyes verdict.
    ADD COLUMN confirmed_by text;

ALTER TABLE cases
    ADD COLUMN escalated_by text,
    ADD COLUMN escalated_at timestamptz;

-- Claim-next skips escalated cases for analysts; leads take them first.
CREATE INDEX cases_escalated ON cases (priority DESC, opened_at, id) WHERE status = 'open' AND escalated;

-- Notes: append-only, per case.
CREATE TABLE notes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    case_id    bigint NOT NULL REFERENCES cases (id),
    author     text NOT NULL,
    body       text NOT NULL CHECK (length(body) BETWEEN 1 AND 10000),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notes_by_case ON notes (case_id, created_at, id);

CREATE TABLE case_tags (
    case_id  bigint NOT NULL REFERENCES cases (id),
    tag      text NOT NULL,
    added_by text NOT NULL,
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (case_id, tag)
);
CREATE INDEX case_tags_by_tag ON case_tags (tag, case_id);
