//! The admin commands through the real `slipway` binary against a temp data dir, and
//! `slipway run trigger` against a real server on a socket.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use server::store::*;

use crate::support::git::GitRepo;
use crate::support::process;
use crate::support::test_server::TestServer;

fn slipway(data: &Path, args: &[&str]) -> Command {
    let mut c = process::slipway();
    c.args(args);
    // `run trigger` is an API client: it has no database settings.
    if args.first() != Some(&"run") {
        c.arg("--data-dir").arg(data);
    }
    c.env("SLIPWAY_PUBLIC_URL", "https://ci.example");
    c
}

fn run(c: &mut Command) -> Output {
    c.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The server's state on the data dir the commands wrote.
async fn open(data: &Path) -> TestServer {
    TestServer::builder().data_dir(data).build().await
}

#[tokio::test]
async fn repo_add_prints_the_webhook_secret_once_and_list_shows_repos() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = run(slipway(
        &data,
        &[
            "repo",
            "add",
            "team/app",
            "--forge",
            "gitea",
            "--clone-url",
            "/srv/app.git",
            "--trusted",
            "--forge-token-env",
            "MY_FORGE_TOKEN",
        ],
    )
    .env("MY_FORGE_TOKEN", "gitea-token-123"));
    let stdout = ok(&out);
    assert!(
        stdout.contains("webhook url:    https://ci.example/hooks/gitea/team/app"),
        "{stdout}"
    );
    let secret = stdout
        .lines()
        .find_map(|l| l.strip_prefix("webhook secret: "))
        .expect("a secret line")
        .to_string();
    assert_eq!(secret.len(), 64);
    assert!(!all_output(&out).contains("gitea-token-123"));

    let out = run(&mut slipway(&data, &["repo", "list"]));
    let listed = ok(&out);
    assert!(
        listed.contains("team/app\tgitea\tmain\ttrusted\t/srv/app.git"),
        "{listed}"
    );
    assert!(!all_output(&out).contains(&secret));

    // The stored secret is the printed one; the token is sealed too.
    let server = open(&data).await;
    let state = &server.state;
    let repo = state.store.get_repo_by_name("team/app").await.unwrap();
    let opened = state
        .secret_box
        .open(
            &repo.webhook_secret_enc,
            &server::daemon::state::webhook_secret_aad("team/app"),
        )
        .unwrap();
    assert_eq!(&opened[..], secret.as_bytes());
    assert!(repo.trusted);
    assert!(repo.forge_token_enc.is_some());
    state.store.close().await;

    // Refusals exit non-zero with a reason.
    let out = run(&mut slipway(
        &data,
        &[
            "repo",
            "add",
            "team/app",
            "--forge",
            "github",
            "--clone-url",
            "/x",
        ],
    ));
    assert!(!out.status.success());
    assert!(all_output(&out).contains("exists"), "{}", all_output(&out));
    let out = run(&mut slipway(
        &data,
        &[
            "repo",
            "add",
            "noslash",
            "--forge",
            "github",
            "--clone-url",
            "/x",
        ],
    ));
    assert!(!out.status.success());
    assert!(all_output(&out).contains("owner/name"));
    let out = run(&mut slipway(
        &data,
        &["repo", "add", "a/b", "--forge", "svn", "--clone-url", "/x"],
    ));
    assert!(!out.status.success());
    assert!(all_output(&out).contains("github, gitlab"));
    let out = run(&mut slipway(
        &data,
        &[
            "repo",
            "add",
            "a/b",
            "--forge",
            "github",
            "--clone-url",
            "/x",
            "--forge-token-env",
            "UNSET_VAR_XYZ",
        ],
    ));
    assert!(!out.status.success());
    assert!(all_output(&out).contains("UNSET_VAR_XYZ"));
}

#[tokio::test]
async fn secrets_come_from_stdin_or_the_environment_never_argv() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(&run(&mut slipway(
        &data,
        &[
            "repo",
            "add",
            "team/app",
            "--forge",
            "github",
            "--clone-url",
            "/x",
        ],
    )));

    let mut child = slipway(&data, &["secret", "set", "team/app", "DEPLOY_KEY"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from-stdin-value\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(ok(&out).contains("created secret DEPLOY_KEY of team/app"));
    assert!(!all_output(&out).contains("from-stdin-value"));

    let out = run(slipway(
        &data,
        &[
            "secret",
            "set",
            "team/app",
            "REGISTRY",
            "--value-env",
            "REG_VALUE",
            "--allow-pull-requests",
        ],
    )
    .env("REG_VALUE", "from-env-value"));
    ok(&out);
    let out = run(slipway(
        &data,
        &[
            "secret",
            "set",
            "team/app",
            "REGISTRY",
            "--value-env",
            "REG_VALUE",
        ],
    )
    .env("REG_VALUE", "from-env-value-2"));
    assert!(ok(&out).contains("updated secret REGISTRY"));

    let out = run(&mut slipway(&data, &["secret", "list", "team/app"]));
    let listed = ok(&out);
    assert_eq!(
        listed,
        "DEPLOY_KEY\tno pull requests\nREGISTRY\tno pull requests\n"
    );

    let server = open(&data).await;
    let state = &server.state;
    let repo = state.store.get_repo_by_name("team/app").await.unwrap();
    let values = state.store.get_secret_values_enc(repo.id).await.unwrap();
    let open = |i: usize| {
        state
            .secret_box
            .open(
                &values[i].value_enc,
                &server::crypto::secret_aad(repo.id, &values[i].name),
            )
            .unwrap()
            .to_vec()
    };
    // One trailing newline is dropped: `echo value | slipway secret set …`.
    assert_eq!(open(0), b"from-stdin-value");
    assert_eq!(open(1), b"from-env-value-2");
    state.store.close().await;

    // Bad names, empty values, unknown repositories.
    let out = run(slipway(
        &data,
        &["secret", "set", "team/app", "1BAD", "--value-env", "V"],
    )
    .env("V", "x"));
    assert!(!out.status.success() && all_output(&out).contains("environment variable name"));
    let out = run(slipway(&data, &["secret", "set", "team/app", "EMPTY"]).stdin(Stdio::null()));
    assert!(!out.status.success() && all_output(&out).contains("empty"));
    // Too short to be masked in logs: refused, and nothing is stored.
    for short in ["abc", "    "] {
        let out = run(slipway(
            &data,
            &["secret", "set", "team/app", "SHORT", "--value-env", "V"],
        )
        .env("V", short));
        let text = all_output(&out);
        assert!(!out.status.success(), "{short:?} was accepted: {text}");
        assert!(
            text.contains("at least 4 bytes") && text.contains("cannot be masked"),
            "{text}"
        );
        assert!(!text.contains("panicked"), "{text}");
    }
    let out = run(&mut slipway(&data, &["secret", "list", "team/app"]));
    assert!(!ok(&out).contains("SHORT"));
    let out = run(slipway(
        &data,
        &["secret", "set", "team/nope", "X", "--value-env", "V"],
    )
    .env("V", "long-enough"));
    assert!(!out.status.success() && all_output(&out).contains("not found"));

    ok(&run(&mut slipway(
        &data,
        &["secret", "rm", "team/app", "REGISTRY"],
    )));
    let out = run(&mut slipway(
        &data,
        &["secret", "rm", "team/app", "REGISTRY"],
    ));
    assert!(!out.status.success());
    let listed = ok(&run(&mut slipway(&data, &["secret", "list", "team/app"])));
    assert_eq!(listed, "DEPLOY_KEY\tno pull requests\n");
}

#[tokio::test]
async fn token_create_prints_a_working_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A hook token names the one repository it may trigger.
    let out = run(&mut slipway(
        &data,
        &["token", "create", "deploy bot", "--scope", "hook"],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--repo owner/name"), "{err}");
    let out = run(&mut slipway(
        &data,
        &[
            "token",
            "create",
            "deploy bot",
            "--scope",
            "hook",
            "--repo",
            "team/app",
        ],
    ));
    let token = ok(&out).trim().to_string();
    assert!(token.starts_with("slp_"), "{token}");
    assert_eq!(ok(&out).lines().count(), 1, "only the token on stdout");
    let server = open(&data).await;
    let state = &server.state;
    let found = state
        .store
        .find_token_by_hash(&server::crypto::hash_token(&token))
        .await
        .unwrap()
        .expect("stored by hash");
    assert_eq!(
        (found.name.as_str(), found.scope, found.repos),
        (
            "deploy bot",
            TokenScope::Hook,
            server::store::RepoScope::Repos(vec!["team/app".into()])
        )
    );
    state.store.close().await;
    let out = run(&mut slipway(
        &data,
        &["token", "create", "x", "--scope", "root"],
    ));
    assert!(!out.status.success());
}

fn git_repo(dir: &Path) -> String {
    GitRepo::init(dir)
        .with_author("Ada", "ada@example.com")
        .commit("refs/heads/release", &[], &[("README", "hi")], "ship it")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_trigger_talks_to_a_real_server_which_still_shuts_down_with_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let src = dir.path().join("src");
    let sha = git_repo(&src);
    ok(&run(&mut slipway(
        &data,
        &[
            "repo",
            "add",
            "team/app",
            "--forge",
            "git",
            "--clone-url",
            src.to_str().unwrap(),
            "--default-branch",
            "release",
        ],
    )));
    let token = ok(&run(&mut slipway(
        &data,
        &["token", "create", "cli", "--scope", "admin"],
    )))
    .trim()
    .to_string();

    let server = TestServer::builder()
        .data_dir(&data)
        .in_process_runner(false)
        .start()
        .await;
    let state = &server.state;
    let url = server.url();
    let d = data.clone();
    let (t, u) = (token.clone(), url.clone());
    let out = tokio::task::spawn_blocking(move || {
        run(slipway(
            &d,
            &[
                "run",
                "trigger",
                "team/app",
                "--param",
                "env=prod",
                "--param",
                "note=a=b",
                "--server",
                &u,
                "--token-env",
                "MY_TOKEN",
            ],
        )
        .env("MY_TOKEN", &t))
    })
    .await
    .unwrap();
    let stdout = ok(&out);
    assert!(
        stdout.contains(&format!("run #1 of team/app at {sha}")),
        "{stdout}"
    );
    assert!(!all_output(&out).contains(&token));
    let repo = state.store.get_repo_by_name("team/app").await.unwrap();
    let run1 = state.store.get_run_by_number(repo.id, 1).await.unwrap();
    assert_eq!(
        (run1.sha.as_str(), run1.trigger, run1.event),
        (sha.as_str(), Trigger::Manual, Event::Manual)
    );
    assert_eq!(
        run1.params,
        serde_json::json!({"env": "prod", "note": "a=b"})
    );
    assert_eq!(run1.branch.as_deref(), Some("release"));

    // A refused trigger says why.
    let d = data.clone();
    let (t, u) = (token.clone(), url.clone());
    let out = tokio::task::spawn_blocking(move || {
        run(slipway(
            &d,
            &[
                "run",
                "trigger",
                "team/app",
                "--branch",
                "nope",
                "--server",
                &u,
                "--token-env",
                "MY_TOKEN",
            ],
        )
        .env("MY_TOKEN", &t))
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(all_output(&out).contains("422"), "{}", all_output(&out));
    let d = data.clone();
    let u = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(slipway(
            &d,
            &[
                "run",
                "trigger",
                "team/app",
                "--server",
                &u,
                "--token-env",
                "MY_TOKEN",
            ],
        )
        .env("MY_TOKEN", "slp_wrong"))
    })
    .await
    .unwrap();
    assert!(!out.status.success() && all_output(&out).contains("401"));

    // An event stream that would never end on its own (nothing plans the run here)
    // must not hold up a graceful shutdown.
    let mut stream = reqwest::Client::new()
        .get(format!("{url}/api/repos/team/app/runs/1/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: run"));
    server.stop_within(Duration::from_secs(15)).await;
}
