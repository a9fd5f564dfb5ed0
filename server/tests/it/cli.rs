//! Drives the real `slipway` binary: validate, exec and schema on real directories and
//! git repositories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::git::GitRepo;
use crate::support::process;

fn slipway(args: &[&str], cwd: &Path) -> Output {
    process::slipway()
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("spawn slipway")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Copies an example into a temp dir so a test can break or extend it.
fn copy_example(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(examples().join(name).join("."))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

fn write(dir: &Path, rel: &str, body: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

/// The summary row of a stage: its columns split on runs of spaces.
fn row<'a>(stdout: &'a str, stage: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .find(|l| {
            l.starts_with(stage)
                && (l.contains("success")
                    || l.contains("skipped")
                    || l.contains("fail")
                    || l.contains("not run"))
                && !l.contains(" | ")
        })
        .unwrap_or_else(|| panic!("no summary row for {stage} in:\n{stdout}"))
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn exec_runs_the_shell_example_and_prints_a_summary() {
    let out = slipway(
        &[
            "exec",
            "examples/shell-project",
            "--branch",
            "main",
            "--jobs",
            "2",
        ],
        &examples().join(".."),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // Live output is prefixed by stage; the summary lists every stage.
    assert!(stdout.contains("| ok scripts/test.sh"), "{stdout}");
    assert!(stdout.contains("| hello, world!"), "{stdout}");
    assert!(
        stdout.contains("| mode: strict") && stdout.contains("| mode: relaxed"),
        "{stdout}"
    );
    for stage in [
        "lint",
        "test (shell_mode=strict)",
        "test (shell_mode=relaxed)",
        "package",
    ] {
        assert_eq!(row(&stdout, stage)[1], "success", "{stage}\n{stdout}");
    }
    let package = row(&stdout, "package").join(" ");
    assert!(package.contains("dist/app.tar sha256:"), "{package}");
    assert!(
        stdout.contains("success: 4 stages ran, 0 failed"),
        "{stdout}"
    );
}

#[test]
fn a_broken_copy_fails_with_file_line_column_diagnostics() {
    let dir = copy_example("shell-project");
    let yaml = std::fs::read_to_string(dir.path().join(".slipway.yml")).unwrap();
    let broken = yaml
        .replace("  lint:\n    steps:", "  lint:\n    stpes:")
        .replace("needs: [test]", "needs: [tset]");
    write(dir.path(), ".slipway.yml", &broken);
    let line_of = |needle: &str| broken.lines().position(|l| l.contains(needle)).unwrap() + 1;

    for command in ["validate", "exec"] {
        let out = slipway(&[command, "."], dir.path());
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{command}\n{stdout}\n{stderr}");
        assert!(
            stderr.contains(&format!(".slipway.yml:{}:5", line_of("stpes:"))),
            "{stderr}"
        );
        assert!(
            stderr.contains("`steps`"),
            "did-you-mean hint missing:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!(".slipway.yml:{}:", line_of("[tset]"))),
            "{stderr}"
        );
        assert!(
            stderr.contains("`test`"),
            "did-you-mean for needs missing:\n{stderr}"
        );
        assert!(
            !stdout.contains("stage started"),
            "{command} must not run anything:\n{stdout}"
        );
    }
}

#[test]
fn validate_accepts_every_example() {
    for example in ["shell-project", "rust-crate", "monorepo"] {
        let out = slipway(&["validate", example], &examples());
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{example}: {stdout}{stderr}");
        assert!(stdout.starts_with("ok: "), "{stdout}");
    }
}

#[test]
fn a_failing_step_fails_the_run_and_skips_dependents() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        ".slipway.yml",
        "stages:\n  build:\n    steps:\n      - run: echo building\n      - name: boom\n        run: exit 42\n      - run: echo never\n  deploy:\n    needs: [build]\n    steps:\n      - run: echo deploying\n  docs:\n    steps:\n      - run: echo docs\n",
    );
    let out = slipway(&["exec", ".", "--branch", "main"], dir.path());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let build = row(&stdout, "build");
    assert_eq!(build[1], "failure", "{stdout}");
    assert!(
        build.join(" ").contains("step `boom` failure (exit 42)"),
        "{stdout}"
    );
    assert_eq!(row(&stdout, "deploy")[1], "skipped", "{stdout}");
    assert_eq!(row(&stdout, "docs")[1], "success", "{stdout}");
    assert!(!stdout.contains("| never"), "{stdout}");
    assert!(!stdout.contains("| deploying"), "{stdout}");
}

#[test]
fn branch_names_are_data_not_shell() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    write(
        dir.path(),
        ".slipway.yml",
        "stages:\n  show:\n    steps:\n      - run: echo \"branch=${{ git.branch }}\"\n",
    );
    let branch = format!("$(touch {})", marker.display());
    let out = slipway(&["exec", ".", "--branch", &branch], dir.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("| branch={branch}")), "{stdout}");
    assert!(!marker.exists(), "the branch name was executed");
}

#[test]
fn secrets_reach_the_step_but_never_the_output() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        ".slipway.yml",
        "stages:\n  leak:\n    env:\n      TOKEN: ${{ secrets.API_TOKEN }}\n    steps:\n      - run: |\n          echo \"raw $TOKEN\"\n          printf %s \"$TOKEN\" | base64\n          [ \"$TOKEN\" = s3cr3t-v4lue-xyz ] && echo matched\n",
    );
    let out = slipway(
        &["exec", ".", "--secret", "API_TOKEN=s3cr3t-v4lue-xyz"],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("| matched"), "{stdout}");
    assert!(stdout.contains("raw ********"), "{stdout}");
    assert!(!stdout.contains("s3cr3t-v4lue-xyz"), "{stdout}");
    assert!(
        !stdout.contains("czNjcjN0LXY0bHVlLXh5eg"),
        "base64 leaked: {stdout}"
    );

    let missing = slipway(&["exec", "."], dir.path());
    let (_, stderr) = text(&missing);
    assert_eq!(missing.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--secret API_TOKEN"), "{stderr}");
}

#[test]
fn monorepo_paths_select_stages() {
    let out = slipway(
        &[
            "exec",
            "monorepo",
            "--changed",
            "frontend/app.js",
            "--pipeline",
            "ci",
        ],
        &examples(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(row(&stdout, "frontend")[1], "success", "{stdout}");
    assert_eq!(row(&stdout, "backend")[1], "skipped", "{stdout}");
    assert_eq!(row(&stdout, "docs")[1], "skipped", "{stdout}");
    assert!(stdout.contains("frontend: exports ok"), "{stdout}");
}

#[test]
fn exec_at_a_commit_uses_the_committed_tree() {
    let dir = tempfile::tempdir().unwrap();
    GitRepo::init(dir.path()).commit(
        "refs/heads/main",
        &[],
        &[
            (
                ".slipway.yml",
                "stages:\n  show:\n    steps:\n      - run: cat version.txt\n",
            ),
            ("version.txt", "committed-v1\n"),
        ],
        "v1",
    );
    // Uncommitted edits must not leak into a run at a commit.
    write(dir.path(), "version.txt", "dirty-v2\n");
    write(dir.path(), ".slipway.yml", "stages: {oops\n");

    let out = slipway(&["exec", ".", "--commit", "HEAD"], dir.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("| committed-v1"), "{stdout}");
    assert!(!stdout.contains("dirty-v2"), "{stdout}");
}

#[test]
fn unsupported_kinds_say_which_backend_they_need() {
    let out = slipway(
        &[
            "exec",
            "rust-crate",
            "--branch",
            "main",
            "--pipeline",
            "nonexistent",
        ],
        &examples(),
    );
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("nothing to run"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        ".slipway.yml",
        "stages:\n  image:\n    kind: image\n    push: 127.0.0.1:5000/app:${{ git.sha }}\n  after:\n    needs: [image]\n    steps: [ { run: echo after } ]\n",
    );
    let out = slipway(&["exec", "."], dir.path());
    let (stdout, stderr) = text(&out);
    // The local backend cannot build images: the stage is not run, says which backend
    // it needs, what needs it does not run, and the exit code says so.
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(row(&stdout, "image")[1], "not run", "{stdout}");
    assert!(
        format!("{stdout}{stderr}").contains(
            "needs the docker backend (builds an image); this is the local backend: pass --backend docker"
        ),
        "{stdout}\n{stderr}"
    );
    assert_eq!(row(&stdout, "after")[1], "skipped", "{stdout}");
}

#[test]
fn exec_never_deploys() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        ".slipway.yml",
        "stages:\n  build:\n    steps: [ { run: echo built } ]\n  production:\n    needs: [build]\n    kind: deploy\n    environment: production\n    steps: [ { run: touch deployed } ]\n  smoke:\n    needs: [production]\n    steps: [ { run: echo smoke } ]\n",
    );
    let out = slipway(&["exec", "."], dir.path());
    let (stdout, stderr) = text(&out);
    // The deploy stage is not run, with the reason, and neither is what needs it;
    // nothing was deployed, and the exit code says a stage could not run…
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("--allow-skip"), "{stderr}");
    // …unless that is accepted.
    let out = slipway(&["exec", ".", "--allow-skip"], dir.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(row(&stdout, "build")[1], "success", "{stdout}");
    assert_eq!(row(&stdout, "production")[1], "not run", "{stdout}");
    assert_eq!(row(&stdout, "smoke")[1], "skipped", "{stdout}");
    assert!(
        format!("{stdout}{stderr}").contains("deploys to `production`, which only the server does"),
        "{stdout}\n{stderr}"
    );
    assert!(!dir.path().join("deployed").exists());
}

#[test]
fn schema_is_json_with_the_stage_shape() {
    let out = slipway(&["schema"], &examples());
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("schema is JSON");
    assert!(schema.pointer("/properties/stages").is_some(), "{schema}");
    // A deploy stage's rollout, down to an analysis' Prometheus check.
    for key in ["target", "strategy", "canary"] {
        let pointer = format!("/$defs/Stage/properties/{key}");
        assert!(schema.pointer(&pointer).is_some(), "{pointer}");
    }
    for def in [
        "StrategySpec",
        "Rolling",
        "BlueGreen",
        "CanaryStrategy",
        "PromCheck",
    ] {
        let pointer = format!("/$defs/{def}/properties");
        assert!(schema.pointer(&pointer).is_some(), "{pointer}");
    }
}
