-- Analysts' accounts and sessions (docs/design/review.md, "Accounts,
-- sessions, audit").

CREATE TABLE users (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    role          text NOT NULL CHECK (role IN ('analyst', 'lead', 'admin')),
    -- argon2id, in the PHC string format; never the password.
    password_hash text NOT NULL,
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    -- SHA-256 of the cookie's token: a stolen table holds no usable session.
    token_hash text PRIMARY KEY,
    user_name  text NOT NULL REFERENCES users (name),
    -- Sent back with every unsafe request (form field or X-CSRF-Token).
    csrf       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_name);
