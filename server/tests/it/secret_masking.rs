//! Masking gaps (issue 17, items 4 and 5), against the real server and its runner:
//! what a modified runner reports is masked by the server on arrival; hex (`xxd -p`,
//! either case, wrapped), URL-encoded and stdout/stderr-split secrets are masked in
//! the stored log; an artifact holding a secret fails its stage, unless the stage
//! opts out.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::full_disk::manual_runner::ManualRunner;
use crate::support::git::commit;
use crate::support::process::Processes;

/// Long enough for `xxd -p` to wrap it (30 bytes a line), with characters URL
/// encoding changes.
const SECRET: &str = "p@ss w/rd!-0123456789abcdefghijklmnopqrstuv";

/// Registers `team/app` (plain git) with `yaml` and the secret `TOKEN`; hook and admin
/// tokens, and the head sha.
fn setup(env: &Processes, yaml: &str) -> (String, String, String) {
    let dir = env.dir.path().join("app");
    std::fs::create_dir_all(&dir).unwrap();
    let sha = commit(&dir, &[(".slipway.yml", yaml)]);
    env.cli(&[
        "repo",
        "add",
        "team/app",
        "--forge",
        "git",
        "--clone-url",
        dir.to_str().unwrap(),
    ]);
    env.cli_with_input(&["secret", "set", "team/app", "TOKEN"], SECRET);
    let hook = env.cli(&[
        "token", "create", "hook", "--scope", "hook", "--repo", "team/app",
    ]);
    let admin = env.cli(&["token", "create", "admin", "--scope", "admin"]);
    (hook, admin, sha)
}

async fn push(env: &Processes, hook: &str, sha: &str) {
    let r = reqwest::Client::new()
        .post(env.url("/hooks/git/team/app"))
        .bearer_auth(hook)
        .json(&json!({ "updates": [{ "old": "0".repeat(40), "new": sha, "ref": "refs/heads/main" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
}

fn stage<'a>(detail: &'a Value, key: &str) -> &'a Value {
    detail["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["key"] == key))
        .unwrap_or_else(|| panic!("no stage {key}: {detail:#}"))
}

/// Every form of the secret (or a part of it) that must not be in a stored log.
fn leaked_forms(text: &str) -> Vec<String> {
    let mut forms = vec![SECRET.to_string(), url_encoded(SECRET)];
    forms.push(base64::engine::general_purpose::STANDARD.encode(SECRET));
    // Any 4 bytes of the secret in hex, in either case: what an xxd line can hold.
    for window in SECRET.as_bytes().windows(4) {
        let lower = hex::encode(window);
        forms.push(lower.to_uppercase());
        forms.push(lower);
    }
    forms.retain(|f| text.contains(f.as_str()));
    forms
}

/// Every byte but the unreserved ones as `%XX`.
fn url_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_masks_what_a_modified_runner_reports() {
    let mut env = Processes::new()
        .env("SLIPWAY_HEARTBEAT_TIMEOUT", "5")
        .env("SLIPWAY_IN_PROCESS_RUNNER", "false");
    env.start_server("server");
    let yaml =
        "stages:\n  build:\n    env: { TOKEN: \"${{ secrets.TOKEN }}\" }\n    steps: [\"true\"]\n";
    let (hook, admin, sha) = setup(&env, yaml);
    let runner_token = env.cli(&["token", "create", "rogue", "--scope", "runner"]);
    push(&env, &hook, &sha).await;

    // A runner that masks nothing: the secret in a log line, an output and the reason.
    let base = env.url("");
    let reported = tokio::task::spawn_blocking(move || {
        let rogue = ManualRunner::register(&base, &runner_token, "rogue", &[]);
        let leased = rogue.lease(Duration::from_secs(60));
        assert_eq!(rogue.step_start(&leased, 0).status, 204);
        let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
        let lines = [format!("the token is {SECRET}!"), format!("b64 {b64}")];
        let a = rogue.log_batch(&leased, 0, 1, &lines);
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(rogue.step_finish(&leased, 0).status, 204);
        rogue.post(
            &format!("/api/runner/stages/{}/finish", leased.stage_id),
            &json!({
                "lease_token": leased.lease,
                "status": "failure",
                "reason": format!("deploy to https://u:{SECRET}@example.com failed"),
                "outputs": { "leak": format!("x{SECRET}y") },
            }),
        )
    })
    .await
    .unwrap();
    assert_eq!(reported.status, 200, "{reported:?}");

    let detail = env
        .wait_run_end(&admin, "team/app", 1, Duration::from_secs(30))
        .await;
    let log = env.step_log(&admin, "team/app", 1, "build", 0).await;
    assert!(
        log.contains("the token is ********!") && log.contains("b64 ********"),
        "{log}"
    );
    assert_eq!(leaked_forms(&log), Vec::<String>::new(), "{log}");
    let build = stage(&detail, "build");
    assert_eq!(build["outputs"]["leak"], "x********y", "{detail:#}");
    assert_eq!(
        build["reason"], "deploy to https://u:********@example.com failed",
        "{detail:#}"
    );
    assert!(!detail.to_string().contains(SECRET));
}

/// The steps that print the secret in the forms the masker must know.
const LEAKS: &str = r#"printf 'plain %s\n' "$TOKEN"
{ printf 'prefix-'; printf '%s' "$TOKEN"; } | xxd -p
printf '%s' "$TOKEN" | xxd -p -c 256 | tr a-f A-F
printf 'url %s\n' 'URL_ENCODED'
rest=${TOKEN#??????????}
printf 'split %s' "${TOKEN%"$rest"}"
sleep 0.5
printf '%s tail\n' "$rest" >&2
sleep 0.5
echo
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_split_and_artifact_secrets_are_caught_by_the_real_runner() {
    let mut env = Processes::new().env("SLIPWAY_RUNNER_BACKEND", "local");
    let leaks = LEAKS.replace("URL_ENCODED", &url_encoded(SECRET));
    let indented: String = leaks.lines().map(|l| format!("          {l}\n")).collect();
    let env_line = "    env: { TOKEN: \"${{ secrets.TOKEN }}\" }\n";
    let yaml = format!(
        "stages:\n  leak:\n{env_line}    steps:\n      - run: |\n{indented}\
         \x20 leaky:\n{env_line}    artifacts: [dist/]\n    steps:\n      - mkdir -p dist && echo ok > dist/readme.txt && printf 'key=%s\\n' \"$TOKEN\" > dist/config.txt\n\
         \x20 leaky-hex:\n{env_line}    artifacts: [out]\n    steps:\n      - mkdir -p out && printf '%s' \"$TOKEN\" | xxd -p -c 256 > out/blob.hex\n\
         \x20 allowed:\n{env_line}    artifacts: [dist/]\n    allow_secrets_in_artifacts: true\n    steps:\n      - mkdir -p dist && printf 'key=%s\\n' \"$TOKEN\" > dist/config.txt\n"
    );
    env.start_server("server");
    let (hook, admin, sha) = setup(&env, &yaml);
    push(&env, &hook, &sha).await;
    let detail = env
        .wait_run_end(&admin, "team/app", 1, Duration::from_secs(120))
        .await;

    // The log: every form masked, the split secret on both streams, lines in order.
    let leak = stage(&detail, "leak");
    assert_eq!(leak["status"], "success", "{detail:#}\n{}", env.logs());
    let log = env.step_log(&admin, "team/app", 1, "leak", 0).await;
    println!("stored log:\n{log}");
    assert_eq!(leaked_forms(&log), Vec::<String>::new(), "{log}");
    for half in [&SECRET[..10], &SECRET[10..]] {
        assert!(!log.contains(half), "half {half:?} in {log}");
    }
    assert!(log.contains("plain ********"), "{log}");
    assert!(log.contains("url ********"), "{log}");
    assert!(log.contains("split ********"), "{log}");
    assert!(log.contains("******** tail"), "{log}");

    // Artifacts holding the secret, plain or hex: the stage fails naming the artifact
    // and the file, never the value, and nothing of it is uploaded.
    for (key, glob, file) in [
        ("leaky", "dist/", "dist/config.txt"),
        ("leaky-hex", "out", "out/blob.hex"),
    ] {
        let s = stage(&detail, key);
        assert_eq!(s["status"], "failure", "{key}: {detail:#}");
        let reason = s["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(&format!(
                "artifact `{glob}` holds a secret value (in {file})"
            )) && reason.contains("allow_secrets_in_artifacts"),
            "{key}: {reason}"
        );
    }
    let allowed = stage(&detail, "allowed");
    assert_eq!(allowed["status"], "success", "{detail:#}");
    let artifacts: Value = reqwest::Client::new()
        .get(env.url(&format!("/api/runs/{}/artifacts", detail["run"]["id"])))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = artifacts.to_string();
    assert!(text.contains("dist/config.txt"), "{artifacts:#}");
    assert!(
        !text.contains("out/blob.hex") && !text.contains("readme.txt"),
        "{artifacts:#}"
    );
    assert!(!detail.to_string().contains(SECRET));
}
