-- Artifacts, stage outputs, scan findings, caches and runner routing (issue 4).
-- PostgreSQL dialect; keep in step with ../sqlite/0002_artifacts_scans_runners.sql.

-- What a stage produced. Files are blobs in the content-addressed store on disk
-- (<data>/blobs/sha256/<aa>/<rest>), so identical content is stored once however
-- many stages upload it. An image stage records its pushed image here too
-- (kind 'image', name = the reference, sha256 = the manifest digest's hex).
CREATE TABLE artifacts (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id     BIGINT  NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    stage_id   BIGINT  NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    kind       TEXT    NOT NULL DEFAULT 'file' CHECK (kind IN ('file', 'image')),
    sha256     TEXT    NOT NULL,
    size       BIGINT  NOT NULL,
    -- Permission bits to restore on download (0o644 = 420; executables 0o755).
    mode       BIGINT  NOT NULL DEFAULT 420,
    created_at BIGINT  NOT NULL,
    UNIQUE (stage_id, name)
);
CREATE INDEX artifacts_by_run ON artifacts (run_id, stage_id);
CREATE INDEX artifacts_by_blob ON artifacts (sha256);

-- `${{ stages.<name>.outputs.<key> }}` values (an image stage's digest).
CREATE TABLE stage_outputs (
    stage_id BIGINT  NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
    name     TEXT    NOT NULL,
    value    TEXT    NOT NULL,
    PRIMARY KEY (stage_id, name)
);

-- Scan stage results: the built-in secret scan and ingested SARIF reports.
CREATE TABLE findings (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id     BIGINT  NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    stage_id   BIGINT  NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
    tool       TEXT    NOT NULL,
    rule       TEXT    NOT NULL,
    severity   TEXT    NOT NULL CHECK (severity IN ('note', 'low', 'medium', 'high', 'critical')),
    path       TEXT,
    line       BIGINT,
    message    TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
CREATE INDEX findings_by_run ON findings (run_id, stage_id);

-- Per-repository caches, keyed by the hash of the files a stage declares; the
-- content is a tar blob in the same store as artifacts.
CREATE TABLE caches (
    repo_id      BIGINT  NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    cache_key    TEXT    NOT NULL,
    sha256       TEXT    NOT NULL,
    size         BIGINT  NOT NULL,
    created_at   BIGINT  NOT NULL,
    last_used_at BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, cache_key)
);

-- Labels a runner must have to lease the stage (JSON array of strings).
ALTER TABLE stages ADD COLUMN labels TEXT NOT NULL DEFAULT '[]';
