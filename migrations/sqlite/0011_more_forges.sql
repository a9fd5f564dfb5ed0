-- Bitbucket Cloud (`bitbucket`), Bitbucket Data Center (`bitbucket-dc`) and Gitee
-- (`gitee`) join the forges a repository or an identity may name. SQLite dialect; keep
-- in step with ../postgres/0011_more_forges.sql.
--
-- SQLite cannot alter a CHECK constraint, so `repos` and `identities` are rebuilt the way
-- SQLite's "ALTER TABLE" page prescribes: create the new table, copy, drop the old one,
-- rename. Store::migrate runs migrations with foreign keys off (and checks them after):
-- with them on, dropping `repos` would cascade-delete every run, secret and artifact row,
-- and renaming would re-point the children's REFERENCES at the old name. The
-- AUTOINCREMENT high-water marks are carried over so ids of deleted rows are never
-- reused.

CREATE TABLE repos_new (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    name               TEXT    NOT NULL UNIQUE,
    forge              TEXT    NOT NULL CHECK (forge IN ('github', 'gitlab', 'gitea', 'forgejo', 'bitbucket', 'bitbucket-dc', 'gitee', 'git')),
    clone_url          TEXT    NOT NULL,
    default_branch     TEXT    NOT NULL,
    webhook_secret_enc BLOB    NOT NULL,
    forge_token_enc    BLOB,
    -- Forge API base URL when it cannot be derived from clone_url (self-hosted
    -- forges behind another host, mirrors cloned from a local path).
    api_url            TEXT,
    trusted            INTEGER NOT NULL DEFAULT 0 CHECK (trusted IN (0, 1)),
    next_run_number    INTEGER NOT NULL DEFAULT 1,
    created_at         INTEGER NOT NULL
);
INSERT INTO repos_new (id, name, forge, clone_url, default_branch, webhook_secret_enc,
                       forge_token_enc, api_url, trusted, next_run_number, created_at)
    SELECT id, name, forge, clone_url, default_branch, webhook_secret_enc,
           forge_token_enc, api_url, trusted, next_run_number, created_at
    FROM repos;
DELETE FROM sqlite_sequence WHERE name = 'repos_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'repos_new', seq FROM sqlite_sequence WHERE name = 'repos';
DROP TABLE repos;
ALTER TABLE repos_new RENAME TO repos;

CREATE TABLE identities_new (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    forge      TEXT    NOT NULL CHECK (forge IN ('github', 'gitlab', 'gitea', 'forgejo', 'bitbucket', 'bitbucket-dc', 'gitee', 'git')),
    login      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (forge, login)
);
INSERT INTO identities_new (id, user_id, forge, login, created_at)
    SELECT id, user_id, forge, login, created_at FROM identities;
DELETE FROM sqlite_sequence WHERE name = 'identities_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'identities_new', seq FROM sqlite_sequence WHERE name = 'identities';
DROP TABLE identities;
ALTER TABLE identities_new RENAME TO identities;
