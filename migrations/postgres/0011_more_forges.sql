-- Bitbucket Cloud (`bitbucket`), Bitbucket Data Center (`bitbucket-dc`) and Gitee
-- (`gitee`) join the forges a repository or an identity may name. PostgreSQL dialect;
-- keep in step with ../sqlite/0011_more_forges.sql. The constraints carry PostgreSQL's
-- default names for the column CHECKs of 0001 and 0003.
ALTER TABLE repos DROP CONSTRAINT repos_forge_check;
ALTER TABLE repos ADD CONSTRAINT repos_forge_check
    CHECK (forge IN ('github', 'gitlab', 'gitea', 'forgejo', 'bitbucket', 'bitbucket-dc', 'gitee', 'git'));
ALTER TABLE identities DROP CONSTRAINT identities_forge_check;
ALTER TABLE identities ADD CONSTRAINT identities_forge_check
    CHECK (forge IN ('github', 'gitlab', 'gitea', 'forgejo', 'bitbucket', 'bitbucket-dc', 'gitee', 'git'));
