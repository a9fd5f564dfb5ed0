-- Slipway schema, PostgreSQL dialect. Keep in step with ../sqlite/0001_init.sql.
-- Conventions (reasons in server/src/store/mod.rs):
--   * timestamps are BIGINT unix milliseconds;
--   * booleans are BOOLEAN (INTEGER 0/1 on SQLite);
--   * JSON is TEXT;
--   * statuses are TEXT with a CHECK listing the allowed values.

CREATE TABLE repos (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               TEXT    NOT NULL UNIQUE,
    forge              TEXT    NOT NULL CHECK (forge IN ('github', 'gitlab', 'gitea', 'forgejo', 'git')),
    clone_url          TEXT    NOT NULL,
    default_branch     TEXT    NOT NULL,
    webhook_secret_enc BYTEA   NOT NULL,
    forge_token_enc    BYTEA,
    -- Forge API base URL when it cannot be derived from clone_url (self-hosted
    -- forges behind another host, mirrors cloned from a local path).
    api_url            TEXT,
    trusted            BOOLEAN NOT NULL DEFAULT FALSE,
    next_run_number    BIGINT  NOT NULL DEFAULT 1,
    created_at         BIGINT  NOT NULL
);

CREATE TABLE runs (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repo_id       BIGINT  NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    number        BIGINT  NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('pending', 'running', 'success', 'failure', 'error', 'cancelled')),
    trigger_kind  TEXT    NOT NULL CHECK (trigger_kind IN ('webhook', 'hook', 'cron', 'manual', 'rerun')),
    event         TEXT    NOT NULL CHECK (event IN ('push', 'pull_request', 'tag', 'cron', 'manual')),
    git_ref       TEXT    NOT NULL,
    branch        TEXT,
    tag           TEXT,
    sha           TEXT    NOT NULL,
    before_sha    TEXT,
    pr_number     BIGINT,
    source_branch TEXT,
    fork          BOOLEAN NOT NULL DEFAULT FALSE,
    trusted       BOOLEAN NOT NULL DEFAULT FALSE,
    message       TEXT    NOT NULL DEFAULT '',
    author        TEXT    NOT NULL DEFAULT '',
    params        TEXT    NOT NULL DEFAULT '{}',
    plan          TEXT,
    yaml_sha256   TEXT,
    diagnostics   TEXT,
    error         TEXT,
    rerun_of      BIGINT REFERENCES runs (id) ON DELETE SET NULL,
    created_at    BIGINT  NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    UNIQUE (repo_id, number)
);
CREATE INDEX runs_by_status ON runs (status);
CREATE INDEX runs_by_branch ON runs (repo_id, branch, event, status);

-- One row per webhook delivery id: the primary key is what makes a repeated delivery
-- a no-op, however many copies arrive at once.
CREATE TABLE deliveries (
    repo_id     BIGINT  NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    delivery_id TEXT    NOT NULL,
    run_id      BIGINT REFERENCES runs (id) ON DELETE SET NULL,
    received_at BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, delivery_id)
);

-- Stages are the durable queue: status 'queued' rows are leased by runners.
CREATE TABLE stages (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           BIGINT  NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    repo_id          BIGINT  NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    stage_key        TEXT    NOT NULL,
    pipeline         TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('waiting', 'queued', 'running', 'success', 'failure', 'error', 'cancelled', 'skipped', 'timed_out')),
    needs            TEXT    NOT NULL DEFAULT '[]',
    spec             TEXT    NOT NULL DEFAULT '{}',
    attempt          BIGINT  NOT NULL DEFAULT 1,
    max_attempts     BIGINT  NOT NULL DEFAULT 1,
    infra_retry_used BOOLEAN NOT NULL DEFAULT FALSE,
    runner_id        BIGINT,
    lease_token      TEXT,
    lease_expires_at BIGINT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    reason           TEXT,
    queued_at        BIGINT,
    started_at       BIGINT,
    finished_at      BIGINT,
    created_at       BIGINT  NOT NULL,
    UNIQUE (run_id, stage_key)
);
CREATE INDEX stages_queue ON stages (status, queued_at, id);
CREATE INDEX stages_by_repo ON stages (status, repo_id);
CREATE INDEX stages_by_lease ON stages (status, lease_expires_at);

CREATE TABLE steps (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stage_id    BIGINT  NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
    idx         BIGINT  NOT NULL,
    name        TEXT    NOT NULL,
    status      TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'success', 'failure', 'error', 'cancelled', 'skipped', 'timed_out')),
    exit_code   BIGINT,
    oom_killed  BOOLEAN NOT NULL DEFAULT FALSE,
    started_at  BIGINT,
    finished_at BIGINT,
    log_lines   BIGINT  NOT NULL DEFAULT 0,
    log_bytes   BIGINT  NOT NULL DEFAULT 0,
    UNIQUE (stage_id, idx)
);

CREATE TABLE secrets (
    repo_id             BIGINT  NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    name                TEXT    NOT NULL,
    value_enc           BYTEA   NOT NULL,
    allow_pull_requests BOOLEAN NOT NULL DEFAULT FALSE,
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, name)
);

CREATE TABLE api_tokens (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT    NOT NULL,
    token_hash   TEXT    NOT NULL UNIQUE,
    scope        TEXT    NOT NULL CHECK (scope IN ('admin', 'runner', 'hook')),
    created_at   BIGINT  NOT NULL,
    last_used_at BIGINT 
);

CREATE TABLE runners (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    labels       TEXT    NOT NULL DEFAULT '[]',
    capacity     BIGINT  NOT NULL DEFAULT 1,
    created_at   BIGINT  NOT NULL,
    last_seen_at BIGINT  NOT NULL
);

CREATE TABLE cron_state (
    repo_id       BIGINT  NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    pipeline      TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    last_fired_at BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, pipeline, name)
);

-- Append-only log of run and stage status changes (SSE, audit).
CREATE TABLE events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id     BIGINT  NOT NULL,
    stage_id   BIGINT,
    status     TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
CREATE INDEX events_by_run ON events (run_id, id);
