-- Slipway schema, SQLite dialect. Keep in step with ../postgres/0001_init.sql.
-- Conventions (reasons in server/src/store/mod.rs):
--   * timestamps are INTEGER unix milliseconds;
--   * booleans are INTEGER 0/1: a column declared BOOLEAN cannot be read through
--     sqlx's Any driver on SQLite;
--   * JSON is TEXT;
--   * statuses are TEXT with a CHECK listing the allowed values.

CREATE TABLE repos (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    name               TEXT    NOT NULL UNIQUE,
    forge              TEXT    NOT NULL CHECK (forge IN ('github', 'gitlab', 'gitea', 'forgejo', 'git')),
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

CREATE TABLE runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    repo_id       INTEGER NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    number        INTEGER NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('pending', 'running', 'success', 'failure', 'error', 'cancelled')),
    trigger_kind  TEXT    NOT NULL CHECK (trigger_kind IN ('webhook', 'hook', 'cron', 'manual', 'rerun')),
    event         TEXT    NOT NULL CHECK (event IN ('push', 'pull_request', 'tag', 'cron', 'manual')),
    git_ref       TEXT    NOT NULL,
    branch        TEXT,
    tag           TEXT,
    sha           TEXT    NOT NULL,
    before_sha    TEXT,
    pr_number     INTEGER,
    source_branch TEXT,
    fork          INTEGER NOT NULL DEFAULT 0 CHECK (fork IN (0, 1)),
    trusted       INTEGER NOT NULL DEFAULT 0 CHECK (trusted IN (0, 1)),
    message       TEXT    NOT NULL DEFAULT '',
    author        TEXT    NOT NULL DEFAULT '',
    params        TEXT    NOT NULL DEFAULT '{}',
    plan          TEXT,
    yaml_sha256   TEXT,
    diagnostics   TEXT,
    error         TEXT,
    rerun_of      INTEGER REFERENCES runs (id) ON DELETE SET NULL,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    UNIQUE (repo_id, number)
);
CREATE INDEX runs_by_status ON runs (status);
CREATE INDEX runs_by_branch ON runs (repo_id, branch, event, status);

-- One row per webhook delivery id: the primary key is what makes a repeated delivery
-- a no-op, however many copies arrive at once.
CREATE TABLE deliveries (
    repo_id     INTEGER NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    delivery_id TEXT    NOT NULL,
    run_id      INTEGER REFERENCES runs (id) ON DELETE SET NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (repo_id, delivery_id)
);

-- Stages are the durable queue: status 'queued' rows are leased by runners.
CREATE TABLE stages (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id           INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    repo_id          INTEGER NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    stage_key        TEXT    NOT NULL,
    pipeline         TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('waiting', 'queued', 'running', 'success', 'failure', 'error', 'cancelled', 'skipped', 'timed_out')),
    needs            TEXT    NOT NULL DEFAULT '[]',
    spec             TEXT    NOT NULL DEFAULT '{}',
    attempt          INTEGER NOT NULL DEFAULT 1,
    max_attempts     INTEGER NOT NULL DEFAULT 1,
    infra_retry_used INTEGER NOT NULL DEFAULT 0 CHECK (infra_retry_used IN (0, 1)),
    runner_id        INTEGER,
    lease_token      TEXT,
    lease_expires_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    reason           TEXT,
    queued_at        INTEGER,
    started_at       INTEGER,
    finished_at      INTEGER,
    created_at       INTEGER NOT NULL,
    UNIQUE (run_id, stage_key)
);
CREATE INDEX stages_queue ON stages (status, queued_at, id);
CREATE INDEX stages_by_repo ON stages (status, repo_id);
CREATE INDEX stages_by_lease ON stages (status, lease_expires_at);

CREATE TABLE steps (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    stage_id    INTEGER NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    status      TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'success', 'failure', 'error', 'cancelled', 'skipped', 'timed_out')),
    exit_code   INTEGER,
    oom_killed  INTEGER NOT NULL DEFAULT 0 CHECK (oom_killed IN (0, 1)),
    started_at  INTEGER,
    finished_at INTEGER,
    log_lines   INTEGER NOT NULL DEFAULT 0,
    log_bytes   INTEGER NOT NULL DEFAULT 0,
    UNIQUE (stage_id, idx)
);

CREATE TABLE secrets (
    repo_id             INTEGER NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    name                TEXT    NOT NULL,
    value_enc           BLOB    NOT NULL,
    allow_pull_requests INTEGER NOT NULL DEFAULT 0 CHECK (allow_pull_requests IN (0, 1)),
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    PRIMARY KEY (repo_id, name)
);

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL,
    token_hash   TEXT    NOT NULL UNIQUE,
    scope        TEXT    NOT NULL CHECK (scope IN ('admin', 'runner', 'hook')),
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER
);

CREATE TABLE runners (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL UNIQUE,
    labels       TEXT    NOT NULL DEFAULT '[]',
    capacity     INTEGER NOT NULL DEFAULT 1,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
);

CREATE TABLE cron_state (
    repo_id       INTEGER NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    pipeline      TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    last_fired_at INTEGER NOT NULL,
    PRIMARY KEY (repo_id, pipeline, name)
);

-- Append-only log of run and stage status changes (SSE, audit).
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     INTEGER NOT NULL,
    stage_id   INTEGER,
    status     TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX events_by_run ON events (run_id, id);
