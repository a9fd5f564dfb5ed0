-- Web UI sessions (sign-in with a user's password). SQLite dialect; keep in step with
-- ../postgres/0005_sessions.sql.

-- A signed-in browser: the cookie holds the token, the row its hash. `csrf` is the
-- token every form and every state-changing API call from the page must carry.
CREATE TABLE sessions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT    NOT NULL UNIQUE,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);
