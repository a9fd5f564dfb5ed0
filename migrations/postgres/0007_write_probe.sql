-- The row the server rewrites every few seconds to learn whether the database takes
-- writes (daemon::disk; /readyz). PostgreSQL dialect; keep in step with
-- ../sqlite/0007_write_probe.sql.
CREATE TABLE write_probe (
    id         BIGINT PRIMARY KEY,
    written_at BIGINT NOT NULL
);
