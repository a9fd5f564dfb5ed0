-- Signing in with a forge (OAuth2 authorization code). SQLite dialect; keep in step
-- with ../postgres/0010_oauth.sql.

-- A forge account a user signs in with: `provider` is the name of a configured OAuth
-- client (`[oauth.<name>]`), `forge_user_id` the forge's stable id for the account
-- (GitHub/GitLab/Gitea numeric id, Bitbucket uuid), never its login, which can be
-- renamed. `login` is only what the forge called the account when it was linked, for
-- people to read. No access token is kept: only the identity is needed.
CREATE TABLE oauth_links (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider      TEXT    NOT NULL,
    forge_user_id TEXT    NOT NULL,
    login         TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    UNIQUE (provider, forge_user_id),
    UNIQUE (user_id, provider)
);

-- A sign-in (or link) under way at a forge: the `state` sent there, kept as its hash;
-- the PKCE verifier; where to go afterwards; for a link, the user asking. Taken (deleted)
-- by the callback that uses it, so each is used at most once; expired ones are swept.
CREATE TABLE oauth_states (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    state_hash    TEXT    NOT NULL UNIQUE,
    provider      TEXT    NOT NULL,
    code_verifier TEXT    NOT NULL,
    next_path     TEXT    NOT NULL,
    link_user_id  INTEGER REFERENCES users (id) ON DELETE CASCADE,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
