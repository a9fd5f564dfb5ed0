-- People, roles, personal tokens, forge identities and the audit log (release
-- governance). SQLite dialect; keep in step with ../postgres/0003_people_audit.sql.

-- Local users. The password is an argon2id PHC string; a disabled user can neither
-- sign in nor use a token.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at    INTEGER NOT NULL
);

-- A user's role, globally (repo_id NULL) or on one repository; at most one of each.
-- The roles are ordered (viewer < developer < release-manager < admin) and a user's
-- role on a repository is the higher of the two.
CREATE TABLE role_bindings (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    repo_id    INTEGER REFERENCES repos (id) ON DELETE CASCADE,
    role       TEXT    NOT NULL CHECK (role IN ('viewer', 'developer', 'release-manager', 'admin')),
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX role_bindings_one ON role_bindings (user_id, COALESCE(repo_id, 0));

-- Personal API tokens: they act as their user, with the user's roles. Stored by hash,
-- like machine tokens.
CREATE TABLE user_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    token_hash   TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER
);

-- A forge account (or, for plain git, a verified email) linked to a user by an admin:
-- the only way the engine learns who pushed or triggered a run. A commit's author
-- string is never looked up here.
CREATE TABLE identities (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    forge      TEXT    NOT NULL CHECK (forge IN ('github', 'gitlab', 'gitea', 'forgejo', 'git')),
    login      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (forge, login)
);

-- Who a run is attributed to: the user whose token triggered it, and the forge
-- account that pushed it (as the forge's verified payload says).
ALTER TABLE runs ADD COLUMN triggered_by INTEGER REFERENCES users (id) ON DELETE SET NULL;
ALTER TABLE runs ADD COLUMN pusher TEXT;

-- Append-only, hash-chained: each entry's hash covers its fields and the previous
-- entry's hash, so an edited or deleted row breaks the chain (`slipway audit verify`).
-- prev_hash is unique: two entries can never claim the same predecessor.
CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    repo_id   INTEGER,
    subject   TEXT    NOT NULL,
    detail    TEXT    NOT NULL DEFAULT '{}',
    prev_hash TEXT    NOT NULL UNIQUE,
    hash      TEXT    NOT NULL UNIQUE
);
CREATE INDEX audit_by_action ON audit_log (action, id);
CREATE INDEX audit_by_repo ON audit_log (repo_id, id);
