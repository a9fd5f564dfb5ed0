//! Release governance end to end, through the real `slipway` processes — the server
//! (its HTTP API, planner, gate worker and in-process runner) and the CLI as a release
//! manager uses it — on SQLite and PostgreSQL: a push builds and deploys to staging,
//! production waits at its gate until two release managers approve, the environments
//! show what is live and what was before, every decision is in the audit log (which an
//! edited row breaks), refusals say why and are on the record, a promotion reuses the
//! tested artifacts without rebuilding, a rollback redeploys the previous version, and a
//! gate survives `kill -9` of the server.
//!
//! Long on purpose: each case is one scenario written out end to end.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use server::store::Dialect;

use crate::support::both_databases;
use crate::support::db::TestDatabase;
use crate::support::forge::hmac_hex;
use crate::support::git::{GitRepo, commit};
use crate::support::process::Processes;

const WAIT: Duration = Duration::from_secs(90);

/// The pipeline every case pushes: a build with an artifact, an unprotected staging
/// deploy, a production deploy. Each stage appends to a file in `$MARKS`, so the tests
/// see what ran, with which artifact (by sha256) and with which environment.
fn pipeline(marks: &str) -> String {
    format!(
        r#"env:
  MARKS: {marks}
stages:
  build:
    artifacts: [dist/]
    steps:
      - name: build
        run: |
          mkdir -p dist
          echo "app from $SLIPWAY_COMMIT_SHA" > dist/app.txt
          echo "$SLIPWAY_RUN_NUMBER" >> "$MARKS/builds"
  staging:
    needs: [build]
    kind: deploy
    environment: staging
    steps:
      - name: deploy
        run: echo "staging $SLIPWAY_RUN_NUMBER $(sha256sum dist/app.txt | cut -c1-64)" >> "$MARKS/deploys"
  production:
    needs: [build, staging]
    kind: deploy
    environment: production
    steps:
      - name: deploy
        run: |
          test "$SLIPWAY_ENVIRONMENT" = production
          if [ -f SLOW ]; then sleep 8; fi
          # With a namespace, the environment has its kubeconfig too (as the tests set it).
          [ -z "$SLIPWAY_NAMESPACE" ] || printf '%s' "$SLIPWAY_KUBECONFIG" | grep -q 'current-context: prod'
          echo "production $SLIPWAY_RUN_NUMBER $SLIPWAY_NAMESPACE $(sha256sum dist/app.txt | cut -c1-64)" >> "$MARKS/deploys"
"#
    )
}

const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\ncurrent-context: prod\n";

/// A running server on its own database, a git repository `team/app` registered as
/// plain git, its hook and admin tokens, and people with personal tokens.
struct Release {
    p: Processes,
    _db: TestDatabase,
    source: PathBuf,
    marks: PathBuf,
    hook: String,
    admin: String,
    /// Personal tokens by user name.
    tokens: HashMap<String, String>,
    http: reqwest::Client,
}

impl Release {
    async fn start(db: Dialect) -> Release {
        let database = TestDatabase::create(db).await;
        let mut p = Processes::new().env("SLIPWAY_DATABASE_URL", &database.url());
        let source = p.dir.path().join("repo");
        let marks = p.dir.path().join("marks");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(&marks).unwrap();
        p.start_server("server");
        p.cli(&[
            "repo",
            "add",
            "team/app",
            "--forge",
            "git",
            "--clone-url",
            source.to_str().unwrap(),
        ]);
        let hook = p.cli(&[
            "token", "create", "hook", "--scope", "hook", "--repo", "team/app",
        ]);
        let admin = p.cli(&["token", "create", "admin", "--scope", "admin"]);
        let mut r = Release {
            p,
            _db: database,
            source,
            marks,
            hook,
            admin,
            tokens: HashMap::new(),
            http: reqwest::Client::new(),
        };
        for (name, role) in [
            ("alice", "developer"),
            ("rm1", "release-manager"),
            ("rm2", "release-manager"),
            ("carol", "release-manager"),
            ("dave", "developer"),
        ] {
            r.p.cli_with_input(
                &["user", "add", name, "--role", role],
                "a long enough password",
            );
            let token = r.p.cli(&["token", "create", "cli", "--user", name]);
            r.tokens.insert(name.to_string(), token);
        }
        // Carol wrote commits as carol@example.com: she may not approve them.
        r.p.cli(&["user", "link", "carol", "git:carol@example.com"]);
        r
    }

    fn token(&self, user: &str) -> &str {
        &self.tokens[user]
    }

    /// `slipway ARGS` as a client of the server with `token`; not asserted.
    fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        self.p
            .command()
            .args(args)
            .env("SLIPWAY_SERVER", self.p.url(""))
            .env("SLIPWAY_TOKEN", token)
            .output()
            .unwrap()
    }

    /// [`Release::cli_as`], which must succeed; its stdout.
    fn ok_as(&self, token: &str, args: &[&str]) -> String {
        let out = self.cli_as(token, args);
        assert!(
            out.status.success(),
            "slipway {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// [`Release::cli_as`], which must fail; its stderr.
    fn refused_as(&self, token: &str, args: &[&str]) -> String {
        let out = self.cli_as(token, args);
        assert!(
            !out.status.success(),
            "slipway {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    async fn api(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), self.p.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Commits the pipeline (plus `extra`) and pushes it to `branch` through the git
    /// hook as `author`; returns the sha.
    async fn push(&self, branch: &str, author: &str, extra: &str) -> String {
        self.push_files(branch, author, extra, &[]).await
    }

    /// [`Release::push`] with more files (`SLOW` makes the production deploy take 8 s).
    async fn push_files(
        &self,
        branch: &str,
        author: &str,
        extra: &str,
        more: &[(&str, &str)],
    ) -> String {
        let yaml = pipeline(self.marks.to_str().unwrap());
        let mut files = vec![(".slipway.yml", yaml.as_str()), ("VERSION", extra)];
        files.extend_from_slice(more);
        let sha = GitRepo::init(&self.source)
            .commit(&format!("refs/heads/{branch}"), &[], &files, extra)
            .to_string();
        let (status, body) = self
            .api(
                "POST",
                "/hooks/git/team/app",
                &self.hook,
                Some(json!({ "updates": [{
                    "old": "0".repeat(40), "new": sha, "ref": format!("refs/heads/{branch}"),
                    "author": author, "message": extra,
                }]})),
            )
            .await;
        assert!(status < 300, "hook: {status} {body}");
        sha
    }

    async fn run(&self, number: i64) -> Value {
        let (status, body) = self
            .api(
                "GET",
                &format!("/api/repos/team/app/runs/{number}"),
                &self.admin,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until run `number`'s stage `key` has `status`.
    async fn wait_stage(&self, number: i64, key: &str, status: &str) -> Value {
        let what = format!("run #{number} stage {key} to be {status}");
        self.p
            .wait(&what, WAIT, || async {
                let detail = self.run(number).await;
                let stage = detail["stages"]
                    .as_array()
                    .and_then(|s| s.iter().find(|s| s["key"] == key).cloned());
                match stage {
                    Some(s) if s["status"] == status => Ok(detail),
                    _ => Err(format!("{detail:#}")),
                }
            })
            .await
    }

    /// Waits until run `number`'s stage `key` waits at its gate for approvals.
    async fn wait_gate(&self, number: i64, key: &str) -> Value {
        let what = format!("run #{number} stage {key} at its gate");
        let path = format!("/api/repos/team/app/runs/{number}/deployments");
        self.p
            .wait(&what, WAIT, || async {
                let (_, ds) = self.api("GET", &path, &self.admin, None).await;
                let at_gate = ds.as_array().is_some_and(|ds| {
                    ds.iter()
                        .any(|d| d["stage"] == key && d["state"] == "pending")
                });
                if at_gate {
                    Ok(ds)
                } else {
                    Err(format!("{ds:#}"))
                }
            })
            .await
    }

    async fn wait_run(&self, number: i64, status: &str) -> Value {
        let what = format!("run #{number} to be {status}");
        self.p
            .wait(&what, WAIT, || async {
                let detail = self.run(number).await;
                if detail["run"]["status"] == status {
                    Ok(detail)
                } else {
                    Err(format!("{detail:#}"))
                }
            })
            .await
    }

    fn lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.marks.join(file))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    async fn audit(&self, action: &str) -> Vec<Value> {
        let (status, body) = self
            .api(
                "GET",
                &format!("/api/audit?action={action}"),
                &self.admin,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body.as_array().unwrap().clone()
    }

    /// Protected production (two release managers, main only, kubeconfig, namespace)
    /// and unprotected staging, through the CLI as an admin.
    fn define_environments(&self, extra: &[&str]) {
        let kubeconfig = self.p.dir.path().join("prod.kubeconfig");
        std::fs::write(&kubeconfig, KUBECONFIG).unwrap();
        let mut args = vec![
            "env",
            "set",
            "team/app",
            "production",
            "--protected",
            "--approvals",
            "2",
            "--ref",
            "main",
            "--namespace",
            "shop-prod",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = self.ok_as(&self.admin, &args);
        assert!(out.contains("protected, 2 approval(s)"), "{out}");
        self.ok_as(&self.admin, &["env", "set", "team/app", "staging"]);
    }
}

fn sha256_of_app(deploy_line: &str) -> &str {
    deploy_line.rsplit(' ').next().unwrap()
}

// ------------------------------------------------------------------- the release

async fn push_build_stage_approve_promote_and_audit(db: Dialect) {
    let mut r = Release::start(db).await;
    r.define_environments(&[]);

    // Push → build → staging deploys (unprotected) → production is blocked.
    let sha = r.push("main", "Alice <alice@example.com>", "1").await;
    r.wait_gate(1, "production").await;
    let detail =
        r.p.wait("run #1 to be blocked", WAIT, || async {
            let d = r.run(1).await;
            if d["run"]["blocked"] == true {
                Ok(d)
            } else {
                Err(format!("{d:#}"))
            }
        })
        .await;
    assert_eq!(detail["run"]["status"], "running", "{detail:#}");
    assert_eq!(r.lines("builds"), ["1"]);
    let staged = r.lines("deploys");
    assert_eq!(staged.len(), 1, "{staged:?}");
    assert!(staged[0].starts_with("staging 1 "), "{staged:?}");

    // The inbox says who may approve, and why not.
    let inbox = r.ok_as(r.token("rm1"), &["inbox"]);
    assert!(
        inbox.contains("team/app") && inbox.contains("you may approve"),
        "{inbox}"
    );
    let (_, items) = r.api("GET", "/api/inbox", r.token("dave"), None).await;
    assert_eq!(items.as_array().unwrap().len(), 1, "{items:#}");
    assert_eq!(items[0]["can_approve"], false, "{items:#}");
    assert!(
        items[0]["reason"]
            .as_str()
            .unwrap()
            .contains("release-manager"),
        "{items:#}"
    );

    // A developer may not approve (whatever the commit's author says: Alice's email
    // is linked to nobody, so it proves nothing and grants nothing).
    let err = r.refused_as(
        r.token("dave"),
        &["approve", "team/app", "1", "production", "-m", "lgtm"],
    );
    assert!(
        err.contains("403") && err.contains("may not approve"),
        "{err}"
    );

    // Two release managers approve; the same one twice counts once.
    let out = r.ok_as(
        r.token("rm1"),
        &[
            "approve",
            "team/app",
            "1",
            "production",
            "--comment",
            "looks good",
            "--sha",
            &sha[..12],
        ],
    );
    assert!(out.contains("1 of 2 approvals"), "{out}");
    let err = r.refused_as(r.token("rm1"), &["approve", "team/app", "1", "production"]);
    assert!(err.contains("already voted"), "{err}");
    let (status, d) = r
        .api(
            "POST",
            "/api/repos/team/app/runs/1/approve",
            r.token("rm2"),
            Some(json!({ "stage": "production", "comment": "ship it" })),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["state"], "approved", "{d:#}");
    let detail = r.wait_run(1, "success").await;
    assert_eq!(detail["run"]["blocked"], false);
    let deploys = r.lines("deploys");
    assert_eq!(deploys.len(), 2, "{deploys:?}");
    assert!(
        deploys[1].starts_with("production 1 shop-prod "),
        "{deploys:?}"
    );
    assert_eq!(sha256_of_app(&deploys[0]), sha256_of_app(&deploys[1]));

    // The kubeconfig never shows in the API or the server's log.
    let (_, envs) = r
        .api("GET", "/api/repos/team/app/environments", &r.admin, None)
        .await;
    assert!(!envs.to_string().contains("current-context"), "{envs}");
    assert!(!r.p.logs().contains("current-context"));

    // A second push goes live the same way; the first is kept as the previous one.
    let sha2 = r.push("main", "Alice <alice@example.com>", "2").await;
    r.wait_gate(2, "production").await;
    r.ok_as(r.token("rm1"), &["approve", "team/app", "2", "production"]);
    r.ok_as(
        r.token("carol"),
        &["approve", "team/app", "2", "production"],
    );
    r.wait_run(2, "success").await;
    let (status, envs) = r
        .api(
            "GET",
            "/api/repos/team/app/environments",
            r.token("dave"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{envs}");
    let prod = envs
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "production")
        .unwrap();
    assert_eq!(prod["live"]["sha"], sha2, "{prod:#}");
    assert_eq!(prod["previous"]["sha"], sha, "{prod:#}");
    let approvers: Vec<&str> = prod["live"]["votes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["user"].as_str().unwrap())
        .collect();
    assert_eq!(approvers, ["rm1", "carol"]);
    let table = r.ok_as(r.token("dave"), &["env", "list", "team/app"]);
    assert!(
        table.contains("production") && table.contains(&format!("#2 {}", &sha2[..7])),
        "{table}"
    );
    assert!(table.contains(&format!("#1 {}", &sha[..7])), "{table}");

    // Promotion without rebuild: run #1's tested artifact goes to staging again and
    // waits at nothing (staging is unprotected); no build runs.
    let out = r.ok_as(
        r.token("rm1"),
        &["promote", "team/app", "1", "--to", "staging"],
    );
    assert!(out.contains("run #3 promotes run #1"), "{out}");
    let detail = r.wait_run(3, "success").await;
    assert_eq!(detail["run"]["promotion"]["from_number"], 1, "{detail:#}");
    let keys: Vec<&str> = detail["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["build", "staging"], "{detail:#}");
    assert_eq!(detail["stages"][0]["reason"], "carried from run #1");
    assert_eq!(r.lines("builds"), ["1", "2"], "nothing rebuilt");
    let deploys = r.lines("deploys");
    let promoted = deploys.last().unwrap();
    assert!(promoted.starts_with("staging 3 "), "{deploys:?}");
    assert_eq!(
        sha256_of_app(promoted),
        sha256_of_app(&deploys[0]),
        "{deploys:?}"
    );
    // The artifact records are the original's, by sha256.
    let id_of = |d: &Value| d["run"]["id"].as_i64().unwrap();
    let run1 = r.run(1).await;
    let (_, a1) = r
        .api(
            "GET",
            &format!("/api/runs/{}/artifacts", id_of(&run1)),
            &r.admin,
            None,
        )
        .await;
    let (_, a3) = r
        .api(
            "GET",
            &format!("/api/runs/{}/artifacts", id_of(&detail)),
            &r.admin,
            None,
        )
        .await;
    let digests = |a: &Value| -> Vec<String> {
        a.as_array()
            .unwrap()
            .iter()
            .map(|x| x["sha256"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(!digests(&a1).is_empty(), "{a1:#}");
    assert_eq!(digests(&a1), digests(&a3));

    // A promotion to a protected environment waits at its gate like any deployment
    // (rejected here: production stays as it is).
    let out = r.ok_as(
        r.token("rm1"),
        &["promote", "team/app", "1", "--to", "production"],
    );
    assert!(out.contains("run #4 promotes run #1"), "{out}");
    let ds = r.wait_gate(4, "production").await;
    assert!(
        ds.to_string().contains(&sha),
        "bound to run #1's commit: {ds:#}"
    );
    r.ok_as(
        r.token("rm2"),
        &["reject", "team/app", "4", "production", "-m", "not now"],
    );
    r.wait_run(4, "failure").await;

    // Roll production back: run #1's version, through the same gate.
    let out = r.ok_as(r.token("rm2"), &["rollback", "team/app", "production"]);
    assert!(out.contains("back to run #1"), "{out}");
    r.wait_gate(5, "production").await;
    // rm2 asked for the rollback, so two others approve it.
    let err = r.refused_as(r.token("rm2"), &["approve", "team/app", "5", "production"]);
    assert!(err.contains("triggered this run"), "{err}");
    r.ok_as(r.token("rm1"), &["approve", "team/app", "5", "production"]);
    r.ok_as(
        r.token("carol"),
        &["approve", "team/app", "5", "production"],
    );
    r.wait_run(5, "success").await;
    let (_, envs) = r
        .api(
            "GET",
            "/api/repos/team/app/environments/production",
            &r.admin,
            None,
        )
        .await;
    assert_eq!(envs["live"]["sha"], sha, "{envs:#}");
    assert_eq!(envs["live"]["run_number"], 5, "{envs:#}");
    assert_eq!(r.lines("builds"), ["1", "2"], "a rollback rebuilds nothing");

    // Every step is on the record, and the chain verifies.
    for action in [
        "environment.set",
        "approval.request",
        "vote.approve",
        "vote.refused",
        "deploy.approved",
        "run.promote",
        "run.rollback",
    ] {
        assert!(!r.audit(action).await.is_empty(), "no {action} entry");
    }
    let verified = r.p.cli(&["audit", "verify"]);
    assert!(verified.contains("audit log intact"), "{verified}");

    // An edited row breaks the chain.
    r.p.kill("server");
    tamper_with_audit(&r).await;
    let out = r.p.command().args(["audit", "verify"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

both_databases!(push_build_stage_approve_promote_and_audit);

/// Changes one vote's comment in the audit log behind Slipway's back.
async fn tamper_with_audit(r: &Release) {
    use sqlx::{Connection, Executor};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&r._db.url()).await.unwrap();
    let done = conn
        .execute(
            "UPDATE audit_log SET detail = REPLACE(detail, 'ship it', 'rubber stamp') \
             WHERE action = 'vote.approve' AND detail LIKE '%ship it%'",
        )
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
    conn.close().await.unwrap();
}

// ------------------------------------------------------------------- refusals

async fn refusals_are_clear_and_on_the_record(db: Dialect) {
    let r = Release::start(db).await;
    r.define_environments(&[]);

    // A branch that may not deploy: production fails at once, with the reason.
    r.push("feature/x", "Alice <alice@example.com>", "f").await;
    let detail = r.wait_stage(1, "production", "failure").await;
    let prod = detail["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "production")
        .unwrap();
    assert!(
        prod["reason"]
            .as_str()
            .unwrap()
            .contains("branch `feature/x` may not deploy to `production`"),
        "{detail:#}"
    );
    assert!(!r.audit("deploy.refused").await.is_empty());

    // Self-approval as the linked commit author (Carol's email, linked to her).
    r.push("main", "Carol <carol@example.com>", "c").await;
    r.wait_gate(2, "production").await;
    let err = r.refused_as(
        r.token("carol"),
        &["approve", "team/app", "2", "production"],
    );
    assert!(err.contains("authored this run"), "{err}");

    // Self-approval as the triggerer: rm1 triggers run #3 by API.
    let (status, run) = r
        .api(
            "POST",
            "/api/repos/team/app/trigger",
            r.token("rm1"),
            Some(json!({ "branch": "main" })),
        )
        .await;
    assert_eq!(status, 201, "{run}");
    r.wait_gate(3, "production").await;
    let (status, body) = r
        .api(
            "POST",
            "/api/repos/team/app/runs/3/approve",
            r.token("rm1"),
            Some(json!({ "stage": "production" })),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("triggered this run"), "{body}");

    // Self-approval as the pusher: a GitHub push by `rm2-gh`, linked to rm2.
    let web = r.p.dir.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    let yaml = pipeline(r.marks.to_str().unwrap());
    let web_sha = commit(&web, &[(".slipway.yml", yaml.as_str())]);
    let added = r.p.cli(&[
        "repo",
        "add",
        "team/web",
        "--forge",
        "github",
        "--clone-url",
        web.to_str().unwrap(),
    ]);
    let secret = added
        .lines()
        .find_map(|l| l.strip_prefix("webhook secret: "))
        .unwrap()
        .trim()
        .to_string();
    r.p.cli(&["user", "link", "rm2", "github:rm2-gh"]);
    r.ok_as(
        &r.admin,
        &[
            "env",
            "set",
            "team/web",
            "production",
            "--protected",
            "--approvals",
            "2",
        ],
    );
    let payload = json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": web_sha,
        "repository": { "id": 7, "clone_url": web.to_str().unwrap(), "full_name": "team/web" },
        "head_commit": { "id": web_sha, "message": "web" },
        "pusher": { "name": "rm2-gh" }, "sender": { "login": "rm2-gh" },
    })
    .to_string();
    let delivered = r
        .http
        .post(r.p.url("/hooks/github/team/web"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "release-test-1")
        .header(
            "X-Hub-Signature-256",
            format!("sha256={}", hmac_hex(secret.as_bytes(), payload.as_bytes())),
        )
        .header("Content-Type", "application/json")
        .body(payload)
        .send()
        .await
        .unwrap();
    assert!(delivered.status().is_success(), "{}", delivered.status());
    r.p.wait("team/web run #1 at its gate", WAIT, || async {
        let (_, d) = r
            .api(
                "GET",
                "/api/repos/team/web/runs/1/deployments",
                &r.admin,
                None,
            )
            .await;
        let at_gate = d.as_array().is_some_and(|ds| {
            ds.iter()
                .any(|d| d["environment"] == "production" && d["state"] == "pending")
        });
        if at_gate {
            Ok(())
        } else {
            Err(format!("{d:#}"))
        }
    })
    .await;
    let err = r.refused_as(r.token("rm2"), &["approve", "team/web", "1", "production"]);
    assert!(err.contains("pushed this run"), "{err}");

    // Machine tokens do not approve; people do.
    let (status, body) = r
        .api(
            "POST",
            "/api/repos/team/app/runs/3/approve",
            &r.admin,
            Some(json!({ "stage": "production" })),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    // Approval after a newer push to the branch: run #2's request gave way.
    r.push("main", "Alice <alice@example.com>", "d").await;
    r.wait_stage(2, "production", "cancelled").await;
    let err = r.refused_as(r.token("rm2"), &["approve", "team/app", "2", "production"]);
    assert!(err.contains("superseded by run #4"), "{err}");

    // Approval bound to another commit.
    r.wait_gate(4, "production").await;
    let err = r.refused_as(
        r.token("rm2"),
        &["approve", "team/app", "4", "production", "--sha", "0000000"],
    );
    assert!(err.contains("approvals are bound to the commit"), "{err}");

    // A rejection fails the stage, with the comment.
    r.ok_as(
        r.token("rm2"),
        &[
            "reject",
            "team/app",
            "4",
            "production",
            "-m",
            "not during the sale",
        ],
    );
    let detail = r.wait_run(4, "failure").await;
    assert!(
        detail
            .to_string()
            .contains("rejected by rm2: not during the sale"),
        "{detail:#}"
    );

    // A pipeline that asks for fewer approvals than the environment requires does not
    // lower the bar: the refusal is on the record, and 2 still apply.
    let lowering = pipeline(r.marks.to_str().unwrap()).replace(
        "    environment: production\n",
        "    environment: production\n    approval: { role: release-manager, count: 1 }\n",
    );
    assert!(lowering.contains("count: 1"));
    r.push_files(
        "main",
        "Alice <alice@example.com>",
        "l",
        &[(".slipway.yml", &lowering)],
    )
    .await;
    let ds = r.wait_gate(5, "production").await;
    let gate = ds
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["stage"] == "production")
        .unwrap();
    assert_eq!(gate["rules"]["required"], 2, "{gate:#}");
    let lowered = r.audit("approval.lowering_refused").await;
    assert_eq!(lowered.len(), 1, "{lowered:#?}");
    assert!(
        lowered[0]["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("asks for 1 approval(s), but environment `production` requires 2"),
        "{lowered:#?}"
    );
    r.ok_as(r.token("rm2"), &["approve", "team/app", "5", "production"]);
    let (_, ds) = r
        .api(
            "GET",
            "/api/repos/team/app/runs/5/deployments",
            &r.admin,
            None,
        )
        .await;
    assert!(
        ds.to_string().contains("\"state\":\"pending\""),
        "one is not enough: {ds:#}"
    );

    // Approval after the timeout: with a 2 s timeout, the next request is rejected
    // for want of a decision, and a late vote is refused.
    r.define_environments(&["--approval-timeout", "2s"]);
    r.push("main", "Alice <alice@example.com>", "e").await;
    let detail = r.wait_stage(6, "production", "failure").await;
    assert!(
        detail.to_string().contains("approval timeout"),
        "{detail:#}"
    );
    let err = r.refused_as(r.token("rm2"), &["approve", "team/app", "6", "production"]);
    assert!(err.contains("timed out"), "{err}");
    assert!(!r.audit("approval.timeout").await.is_empty());

    let refused = r.audit("vote.refused").await;
    let reasons: Vec<String> = refused
        .iter()
        .map(|e| e["detail"]["reason"].as_str().unwrap().to_string())
        .collect();
    for expected in [
        "authored",
        "pushed",
        "triggered",
        "superseded",
        "bound to the commit",
        "timed out",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no refusal for {expected}: {reasons:#?}"
        );
    }
    r.p.cli(&["audit", "verify"]);
}

both_databases!(refusals_are_clear_and_on_the_record);

// ------------------------------------------------------------------- kill -9

async fn a_blocked_run_survives_kill_9(db: Dialect) {
    let prod = |ds: &Value| -> Value {
        ds.as_array()
            .unwrap()
            .iter()
            .find(|d| d["stage"] == "production")
            .cloned()
            .unwrap_or_else(|| panic!("no production deployment: {ds:#}"))
    };
    let mut r = Release::start(db).await;
    r.define_environments(&["--approval-timeout", "1h"]);
    r.push("main", "Alice <alice@example.com>", "1").await;
    r.wait_gate(1, "production").await;
    r.ok_as(
        r.token("rm1"),
        &["approve", "team/app", "1", "production", "-m", "first"],
    );
    let (_, before) = r
        .api(
            "GET",
            "/api/repos/team/app/runs/1/deployments",
            &r.admin,
            None,
        )
        .await;
    assert_eq!(
        prod(&before)["votes"].as_array().unwrap().len(),
        1,
        "{before:#}"
    );

    r.p.kill("server"); // SIGKILL
    r.p.start_server("server-2");

    // The gate, its vote and its timeout are as they were; the run is still blocked.
    let (_, after) = r
        .api(
            "GET",
            "/api/repos/team/app/runs/1/deployments",
            &r.admin,
            None,
        )
        .await;
    assert_eq!(prod(&after)["state"], "pending", "{after:#}");
    assert_eq!(prod(&after)["votes"], prod(&before)["votes"], "{after:#}");
    assert_eq!(
        prod(&after)["expires_at"],
        prod(&before)["expires_at"],
        "{after:#}"
    );
    assert!(prod(&after)["expires_at"].as_i64().is_some(), "{after:#}");
    let detail = r.run(1).await;
    assert_eq!(detail["run"]["blocked"], true, "{detail:#}");
    // The same person still counts once; a second one completes it.
    let err = r.refused_as(r.token("rm1"), &["approve", "team/app", "1", "production"]);
    assert!(err.contains("already voted"), "{err}");
    r.ok_as(r.token("rm2"), &["approve", "team/app", "1", "production"]);
    r.wait_run(1, "success").await;
    assert_eq!(r.lines("builds"), ["1"], "nothing ran twice");
    assert_eq!(r.lines("deploys").len(), 2);
}

both_databases!(a_blocked_run_survives_kill_9);

// ------------------------------------------------------------------- one at a time

async fn one_deployment_at_a_time_wait_timers_and_supersede(db: Dialect) {
    let r = Release::start(db).await;
    // Production: no approvals, one deployment at a time (queue); staging waits 2 s.
    r.ok_as(&r.admin, &["env", "set", "team/app", "production"]);
    r.ok_as(
        &r.admin,
        &["env", "set", "team/app", "staging", "--wait-timer", "2s"],
    );
    r.push_files("main", "Alice <alice@example.com>", "1", &[("SLOW", "")])
        .await;
    r.wait_stage(1, "production", "running").await;
    // Another branch's run reaches production while run #1 deploys: it waits.
    r.push("release/2", "Alice <alice@example.com>", "2").await;
    let path = "/api/repos/team/app/runs/2/deployments";
    r.p.wait("run #2 at the production gate", WAIT, || async {
        let (_, ds) = r.api("GET", path, &r.admin, None).await;
        if ds.to_string().contains("\"environment\":\"production\"") {
            Ok(())
        } else {
            Err(format!("{ds:#}"))
        }
    })
    .await;
    let first = r.run(1).await;
    let second = r.run(2).await;
    let status = |d: &Value| {
        d["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == "production")
            .unwrap()["status"]
            .clone()
    };
    // (Run #1 sleeps 8 s in production; run #2 got there in about 3.)
    assert_eq!(status(&first), "running", "{first:#}");
    assert_eq!(status(&second), "waiting", "{second:#}");
    assert_eq!(second["run"]["blocked"], true, "{second:#}");
    r.wait_run(1, "success").await;
    r.wait_run(2, "success").await;
    let prod: Vec<String> = r
        .lines("deploys")
        .into_iter()
        .filter(|l| l.starts_with("production"))
        .collect();
    assert_eq!(prod.len(), 2, "{prod:?}");
    assert!(prod[0].starts_with("production 1 "), "{prod:?}");
    // The wait timer held staging for 2 s after its gate opened.
    let (_, ds) = r
        .api(
            "GET",
            "/api/repos/team/app/runs/2/deployments",
            &r.admin,
            None,
        )
        .await;
    let staging = ds
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["environment"] == "staging")
        .unwrap();
    let waited = staging["started_at"].as_i64().unwrap() - staging["opened_at"].as_i64().unwrap();
    assert!(waited >= 2000, "{staging:#}");

    // Supersede: a newer deployment replaces the one still waiting for approvals.
    r.ok_as(
        &r.admin,
        &[
            "env",
            "set",
            "team/app",
            "production",
            "--protected",
            "--concurrency",
            "supersede",
            "--no-supersede-on-push",
        ],
    );
    r.ok_as(&r.admin, &["env", "set", "team/app", "staging"]);
    r.push("main", "Alice <alice@example.com>", "3").await;
    r.wait_gate(3, "production").await;
    r.push("release/4", "Alice <alice@example.com>", "4").await;
    let detail = r.wait_stage(3, "production", "cancelled").await;
    assert!(
        detail.to_string().contains("superseded by run #4"),
        "{detail:#}"
    );
    r.wait_gate(4, "production").await;
}

both_databases!(one_deployment_at_a_time_wait_timers_and_supersede);

// ------------------------------------------------------------------- the README

/// The `sh` blocks of the README's "Releasing with Slipway", in order.
fn readme_blocks() -> (String, Vec<String>) {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let section = readme
        .split("## Releasing with Slipway")
        .nth(1)
        .expect("a Releasing with Slipway section")
        .split("\n## ")
        .next()
        .unwrap()
        .to_string();
    let block = |lang: &str| -> Vec<String> {
        section
            .split(&format!("```{lang}\n"))
            .skip(1)
            .map(|b| b.split("```").next().unwrap().to_string())
            .collect()
    };
    let yaml = block("yaml").remove(0);
    (yaml, block("sh"))
}

/// The README's release walk-through, as written (only the server's address is this
/// test's): its pipeline, its commands for people and environments, the two approvals,
/// then what is live, a promotion and a rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_release_section_works_as_written() {
    let (yaml, blocks) = readme_blocks();
    assert_eq!(blocks.len(), 3, "{blocks:#?}");
    let mut p = Processes::new();
    p.start_server("server");
    let source = p.dir.path().join("repo");
    std::fs::create_dir_all(&source).unwrap();
    p.cli(&[
        "repo",
        "add",
        "team/app",
        "--forge",
        "git",
        "--clone-url",
        source.to_str().unwrap(),
    ]);
    let hook = p.cli(&[
        "token", "create", "hook", "--scope", "hook", "--repo", "team/app",
    ]);
    let work = p.dir.path().join("work-dir");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("prod.kubeconfig"), KUBECONFIG).unwrap();
    let bin = p.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(crate::support::process::slipway_bin(), bin.join("slipway"))
        .unwrap();
    let sh = |block: &str| {
        let script = block.replace("http://127.0.0.1:8080", &p.url(""));
        let out = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(&work)
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
            )
            .env("SLIPWAY_DATA_DIR", p.data())
            // Exported by the first block, as in the reader's shell.
            .env("SLIPWAY_SERVER", p.url(""))
            .env("ADA_PASSWORD", "ada's long password")
            .env("RELEASE_PASSWORD", "release managers' password")
            .env_remove("SLIPWAY_TOKEN")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{script}\n{text}");
        text
    };
    let push = |n: &str| {
        let files = [
            (".slipway.yml", yaml.as_str()),
            (
                "Makefile",
                "dist:\n\tmkdir -p dist && echo app > dist/app\n",
            ),
            (
                "deploy.sh",
                "#!/bin/sh\nset -e\ntest -f dist/app\necho \"deploying to $1 ($SLIPWAY_ENVIRONMENT)\"\n",
            ),
            ("VERSION", n),
        ];
        let mut tree = crate::support::git::files(&files);
        tree.get_mut("deploy.sh").unwrap().0 = crate::support::git::EXEC;
        GitRepo::init(&source)
            .commit_files("refs/heads/main", &[], &tree, n)
            .to_string()
    };
    let client = reqwest::Client::new();
    let deliver = |sha: String| {
        let client = client.clone();
        let url = p.url("/hooks/git/team/app");
        let hook = hook.clone();
        async move {
            let r = client
                .post(url)
                .bearer_auth(hook)
                .json(&json!({ "updates": [{
                    "old": "0".repeat(40), "new": sha, "ref": "refs/heads/main",
                }]}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    let read = |file: &str| std::fs::read_to_string(work.join(file)).unwrap();
    let get = |path: String, token: String| {
        let client = client.clone();
        let url = p.url(&path);
        async move {
            let r = client.get(url).bearer_auth(token).send().await.unwrap();
            r.json::<Value>().await.unwrap()
        }
    };
    let at_gate = |number: i64| {
        let token = read("rita.token").trim().to_string();
        async move {
            let ds = get(
                format!("/api/repos/team/app/runs/{number}/deployments"),
                token,
            )
            .await;
            if ds.as_array().is_some_and(|ds| {
                ds.iter()
                    .any(|d| d["stage"] == "production" && d["state"] == "pending")
            }) {
                Ok(())
            } else {
                Err(format!("{ds:#}"))
            }
        }
    };
    let run_status = |number: i64| {
        let token = read("rita.token").trim().to_string();
        async move {
            let d = get(format!("/api/repos/team/app/runs/{number}"), token).await;
            d["run"]["status"].as_str().unwrap_or_default().to_string()
        }
    };

    // People and environments.
    sh(&blocks[0]);
    // A push to main waits at production.
    deliver(push("1")).await;
    p.wait("run #1 at the production gate", WAIT, || at_gate(1))
        .await;
    // Two release managers approve.
    let out = sh(&blocks[1]);
    assert!(out.contains("you may approve"), "{out}");
    p.wait("run #1 to succeed", WAIT, || async {
        match run_status(1).await.as_str() {
            "success" => Ok(()),
            s => Err(s.to_string()),
        }
    })
    .await;
    // A second version goes live the same way.
    deliver(push("2")).await;
    p.wait("run #2 at the production gate", WAIT, || at_gate(2))
        .await;
    for who in ["rita", "sam"] {
        let token = read(&format!("{who}.token"));
        let r = client
            .post(p.url("/api/repos/team/app/runs/2/approve"))
            .bearer_auth(token.trim())
            .json(&json!({ "stage": "production" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    p.wait("run #2 to succeed", WAIT, || async {
        match run_status(2).await.as_str() {
            "success" => Ok(()),
            s => Err(s.to_string()),
        }
    })
    .await;
    // What is live, a promotion, a rollback.
    let out = sh(&blocks[2]);
    assert!(out.contains("production") && out.contains("#2 "), "{out}");
    assert!(out.contains("run #3 promotes run #1"), "{out}");
    assert!(
        out.contains("run #4 rolls `production` of team/app back to run #1"),
        "{out}"
    );
    p.wait("the promotion to succeed", WAIT, || async {
        match run_status(3).await.as_str() {
            "success" => Ok(()),
            s => Err(s.to_string()),
        }
    })
    .await;
    p.wait("the rollback at the production gate", WAIT, || at_gate(4))
        .await;
}

// ------------------------------------------------------------------- images

/// A promotion deploys the image the original run pushed, by the digest it recorded:
/// the image stage is carried over, not run, and the deploy stage gets the digest
/// (real Docker engine and registry: `.ci/images.sh`, `.ci/registry.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_deploys_the_pushed_digest_without_rebuilding() {
    let db = TestDatabase::create(Dialect::Sqlite).await;
    let mut p = Processes::new()
        .env("SLIPWAY_DATABASE_URL", &db.url())
        .env("SLIPWAY_RUNNER_BACKEND", "docker");
    p.start_server("server");
    let source = p.dir.path().join("repo");
    std::fs::create_dir_all(&source).unwrap();
    p.cli(&[
        "repo",
        "add",
        "team/img",
        "--forge",
        "git",
        "--clone-url",
        source.to_str().unwrap(),
    ]);
    p.cli_with_input(
        &["secret", "set", "team/img", "REGISTRY_AUTH"],
        "slipway:slipway-test",
    );
    let hook = p.cli(&[
        "token", "create", "hook", "--scope", "hook", "--repo", "team/img",
    ]);
    let admin = p.cli(&["token", "create", "admin", "--scope", "admin"]);
    let yaml = "\
stages:
  image:
    image: slipway-test/busybox:latest
    kind: image
    push: 127.0.0.1:5000/release-test/img:${{ git.sha }}
    registry_secret: REGISTRY_AUTH
  production:
    needs: [image]
    kind: deploy
    environment: production
    image: slipway-test/busybox:latest
    steps:
      - name: roll out
        run: echo \"rolling out 127.0.0.1:5000/release-test/img@${{ stages.image.outputs.digest }}\"
";
    let dockerfile = format!(
        "FROM slipway-test/busybox:latest\nRUN echo {} > /stamp\n",
        std::process::id()
    );
    let sha = GitRepo::init(&source)
        .commit(
            "refs/heads/main",
            &[],
            &[(".slipway.yml", yaml), ("Dockerfile", dockerfile.as_str())],
            "img",
        )
        .to_string();
    let http = reqwest::Client::new();
    let r = http
        .post(p.url("/hooks/git/team/img"))
        .bearer_auth(&hook)
        .json(
            &json!({ "updates": [{ "old": "0".repeat(40), "new": sha, "ref": "refs/heads/main" }]}),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let get = |path: String| {
        let http = http.clone();
        let url = p.url(&path);
        let admin = admin.clone();
        async move {
            http.get(url)
                .bearer_auth(admin)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let finished = |number: i64| {
        let get = &get;
        async move {
            let d = get(format!("/api/repos/team/img/runs/{number}")).await;
            match d["run"]["status"].as_str() {
                Some("pending" | "running") | None => Err(format!("{d:#}")),
                _ => Ok(d),
            }
        }
    };
    let first = p
        .wait("run #1 to finish", Duration::from_secs(300), || finished(1))
        .await;
    assert_eq!(first["run"]["status"], "success", "{first:#}\n{}", p.logs());
    let stage = |d: &Value, key: &str| -> Value {
        d["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .cloned()
            .unwrap()
    };
    let digest = stage(&first, "image")["outputs"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{first:#}");

    // Promote run #1 to production again (a redeploy of the same version).
    let r = http
        .post(p.url("/api/repos/team/img/runs/1/promote"))
        .bearer_auth(&admin)
        .json(&json!({ "environment": "production" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let second = p
        .wait("the promotion to finish", Duration::from_secs(120), || {
            finished(2)
        })
        .await;
    assert_eq!(
        second["run"]["status"],
        "success",
        "{second:#}\n{}",
        p.logs()
    );
    let image = stage(&second, "image");
    assert_eq!(image["reason"], "carried from run #1", "{second:#}");
    assert!(
        image["started_at"].is_null(),
        "the image stage did not run: {image:#}"
    );
    assert_eq!(image["outputs"]["digest"], digest.as_str(), "{image:#}");
    let prod = stage(&second, "production");
    let log = http
        .get(p.url(&format!(
            "/api/repos/team/img/runs/2/stages/{}/steps/0/logs.txt",
            prod["id"]
        )))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        log.contains(&format!(
            "rolling out 127.0.0.1:5000/release-test/img@{digest}"
        )),
        "{log}"
    );
    // The deployment records the digest that went out.
    let ds = get("/api/repos/team/img/runs/2/deployments".into()).await;
    assert_eq!(ds[0]["images"][0]["digest"], digest.as_str(), "{ds:#}");
}
