-- Listing open cases across every queue in claim order, and finding payments
-- by transaction id prefix is not needed (the primary key serves exact ids).
CREATE INDEX cases_open_in_order ON cases (priority DESC, opened_at, id) WHERE status = 'open';
-- Closed cases, newest first, for the page that lists what was decided.
CREATE INDEX cases_closed_recent ON cases (closed_at DESC, id DESC) WHERE status = 'closed';
