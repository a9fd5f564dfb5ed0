-- Which repositories a machine token is for, and a runner registered with it
-- (store::repo_scope): both NULL means every repository; `scope_owner` the repositories
-- of one owner; `scope_repos` a JSON array of `owner/name`. A hook token names exactly
-- one repository. SQLite dialect; keep in step with ../postgres/0008_repo_scopes.sql.
ALTER TABLE api_tokens ADD COLUMN scope_owner TEXT;
ALTER TABLE api_tokens ADD COLUMN scope_repos TEXT;
ALTER TABLE runners ADD COLUMN scope_owner TEXT;
ALTER TABLE runners ADD COLUMN scope_repos TEXT;
