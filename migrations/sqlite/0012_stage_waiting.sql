-- Why a leased stage has not started its first step: its runner's backend waits for
-- something outside the stage (a Kubernetes ResourceQuota). Set and cleared by the
-- runner protocol's `waiting` report, cleared when the stage is leased again.
-- SQLite dialect; keep in step with ../postgres/0012_stage_waiting.sql.
ALTER TABLE stages ADD COLUMN waiting TEXT;
