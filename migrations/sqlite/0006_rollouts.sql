-- Progressive delivery: the rollout controller's persisted state. SQLite dialect; keep
-- in step with ../postgres/0006_rollouts.sql.

-- A deploy stage with a rollout is driven by the server's rollout controller, never
-- leased to a runner, and holds no runner slot while it waits, pauses or analyses.
ALTER TABLE stages ADD COLUMN rollout INTEGER NOT NULL DEFAULT 0 CHECK (rollout IN (0, 1));

-- One per rollout stage (created when the controller takes the queued stage). Every
-- step is idempotent, so a replica that takes over after a crash re-applies the
-- persisted step and goes on from there.
CREATE TABLE rollouts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    stage_id        INTEGER NOT NULL UNIQUE REFERENCES stages (id) ON DELETE CASCADE,
    run_id          INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    repo_id         INTEGER NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    environment     TEXT    NOT NULL,
    namespace       TEXT    NOT NULL,
    deployment      TEXT    NOT NULL,
    -- The rollout as planned (JSON), its image rendered: what every step follows.
    spec            TEXT    NOT NULL,
    image           TEXT    NOT NULL,
    -- What the target ran when the rollout began (for the record; a rollback leaves
    -- the stable Deployment as it is).
    stable_image    TEXT,
    phase           TEXT    NOT NULL CHECK (phase IN ('progressing', 'paused', 'rolling_back', 'succeeded', 'failed', 'aborted')),
    -- Index into the rollout's actions, and when the controller first reached it.
    step            INTEGER NOT NULL DEFAULT 0,
    step_started_at INTEGER NOT NULL,
    -- Per-step memory (JSON): what a step must know across ticks and restarts.
    memo            TEXT    NOT NULL DEFAULT '{}',
    -- Why it pauses or ended as it did, for people.
    message         TEXT,
    -- Requests from people, taken by the controller on its next tick.
    promote_request TEXT CHECK (promote_request IN ('step', 'full')),
    abort_requested INTEGER NOT NULL DEFAULT 0 CHECK (abort_requested IN (0, 1)),
    aborted_by      TEXT,
    -- One replica at a time drives a rollout.
    lease_owner     TEXT,
    lease_until     INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE INDEX rollouts_active ON rollouts (finished_at, id);

-- Every analysis measurement, kept with the rollout and shown with the stage.
CREATE TABLE rollout_measurements (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id  INTEGER NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    step        INTEGER NOT NULL,
    -- `step`, `background`, `pre_promotion` or `post_promotion`.
    analysis    TEXT    NOT NULL,
    -- A step's measurements are numbered from 1, so a retried tick never adds one twice.
    seq         INTEGER NOT NULL,
    check_name  TEXT    NOT NULL,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('pass', 'fail', 'inconclusive', 'error')),
    value       TEXT,
    detail      TEXT    NOT NULL DEFAULT '',
    at          INTEGER NOT NULL,
    UNIQUE (rollout_id, step, analysis, seq, check_name)
);
