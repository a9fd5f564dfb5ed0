-- Environments, their deployments (each one an approval gate first) and the votes
-- on them (release governance). SQLite dialect; keep in step with
-- ../postgres/0004_environments.sql.

-- Where a repository deploys, with the rules that protect it. Defined on the server
-- only: a pipeline's YAML can add requirements to a deploy stage, never lower these.
CREATE TABLE environments (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    repo_id             INTEGER NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    name                TEXT    NOT NULL,
    protected           INTEGER NOT NULL DEFAULT 0 CHECK (protected IN (0, 1)),
    -- Distinct eligible approvals a protected environment needs.
    required_approvals  INTEGER NOT NULL DEFAULT 1 CHECK (required_approvals BETWEEN 1 AND 100),
    -- JSON arrays: roles (at least) and user names that may approve; both empty means
    -- release managers.
    approver_roles      TEXT    NOT NULL DEFAULT '[]',
    approver_users      TEXT    NOT NULL DEFAULT '[]',
    -- Whether the run's triggerer, pusher or linked commit author may approve it.
    allow_self_approval INTEGER NOT NULL DEFAULT 0 CHECK (allow_self_approval IN (0, 1)),
    -- JSON array of ref patterns that may deploy here (`main`, `release/*`, `tag:v*`);
    -- empty: any branch or tag.
    refs                TEXT    NOT NULL DEFAULT '[]',
    wait_timer_ms       INTEGER NOT NULL DEFAULT 0,
    -- An approval still missing after this long rejects the deployment (NULL: never).
    approval_timeout_ms INTEGER,
    -- One deployment at a time: a newer one waits (queue) or replaces the waiting
    -- ones (supersede).
    concurrency         TEXT    NOT NULL DEFAULT 'queue' CHECK (concurrency IN ('queue', 'supersede')),
    -- A newer push to the branch supersedes a pending approval request.
    supersede_on_push   INTEGER NOT NULL DEFAULT 1 CHECK (supersede_on_push IN (0, 1)),
    -- Cluster connection for deploy stages: a kubeconfig sealed like a secret, or
    -- NULL for the runner's own (in-cluster) credentials.
    kubeconfig_enc      BLOB,
    namespace           TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    UNIQUE (repo_id, name)
);

-- One per deploy stage that reached its environment: the approval gate, then the
-- deployment's record (the stage row says when it ran and how it ended).
CREATE TABLE deployments (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    repo_id      INTEGER NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    run_id       INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    stage_id     INTEGER NOT NULL UNIQUE REFERENCES stages (id) ON DELETE CASCADE,
    environment  TEXT    NOT NULL,
    -- What the approvals are bound to.
    sha          TEXT    NOT NULL,
    plan_hash    TEXT    NOT NULL,
    -- The rules in force when the gate opened (JSON): approvals needed, who may vote,
    -- self-approval, wait timer, concurrency.
    rules        TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'timed_out', 'superseded', 'refused', 'cancelled')),
    reason       TEXT,
    opened_at    INTEGER NOT NULL,
    expires_at   INTEGER,
    decided_at   INTEGER
);
CREATE INDEX deployments_by_env ON deployments (repo_id, environment, id);
CREATE INDEX deployments_by_state ON deployments (state, id);
CREATE INDEX deployments_by_run ON deployments (run_id);

-- A person's decision on a deployment; one per person, bound to what they saw.
CREATE TABLE deployment_votes (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    user_id       INTEGER NOT NULL REFERENCES users (id),
    decision      TEXT    NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment       TEXT    NOT NULL DEFAULT '',
    sha           TEXT    NOT NULL,
    plan_hash     TEXT    NOT NULL,
    at            INTEGER NOT NULL,
    UNIQUE (deployment_id, user_id)
);

-- A promotion or rollback run: the run whose artifacts it deploys, and where to.
ALTER TABLE runs ADD COLUMN promoted_from INTEGER REFERENCES runs (id) ON DELETE SET NULL;
ALTER TABLE runs ADD COLUMN promotion TEXT CHECK (promotion IN ('promote', 'rollback'));
ALTER TABLE runs ADD COLUMN target_environment TEXT;
