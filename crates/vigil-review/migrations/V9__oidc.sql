-- Logins through an OpenID Connect provider (docs/design/review.md,
-- "Accounts, sessions, audit"): an account is either local (a password hash)
-- or the provider's (its issuer and subject), never both.
ALTER TABLE users
    ALTER COLUMN password_hash DROP NOT NULL,
    ADD COLUMN oidc_issuer  text,
    ADD COLUMN oidc_subject text,
    ADD CONSTRAINT users_one_way_in CHECK ((password_hash IS NULL) = (oidc_subject IS NOT NULL)),
    ADD CONSTRAINT users_oidc_whole CHECK ((oidc_issuer IS NULL) = (oidc_subject IS NULL));
CREATE UNIQUE INDEX users_by_oidc ON users (oidc_issuer, oidc_subject) WHERE oidc_subject IS NOT NULL;

-- A login under way: what the callback needs to finish it, kept ten minutes
-- and taken once. Keyed by the SHA-256 of the `state` the browser carries.
CREATE TABLE oidc_logins (
    state_hash    text PRIMARY KEY,
    pkce_verifier text NOT NULL,
    nonce         text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
