-- The row the server rewrites every few seconds to learn whether the database takes
-- writes (daemon::disk; /readyz). SQLite dialect; keep in step with
-- ../postgres/0007_write_probe.sql.
CREATE TABLE write_probe (
    id         INTEGER PRIMARY KEY,
    written_at INTEGER NOT NULL
);
