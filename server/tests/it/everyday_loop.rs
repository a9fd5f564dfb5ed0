//! The README's everyday loop, as written there, from a developer's fresh machine (a
//! temporary HOME and working directory, none of the server's environment): the first
//! admin made on the server's database, then `slipway login` and every other command
//! through the HTTP API alone — a real `git push` through the post-receive hook, `runs
//! list`, `logs -f` to the end of the run, `rerun --failed`, `cancel` of a running run,
//! `token revoke` — and no `slipway-data` anywhere but the server's data dir.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::git::git;
use crate::support::poll::eventually_blocking;
use crate::support::process::{Killed, Processes, slipway_bin, wait_exit};

const README: &str = include_str!("../../../README.md");

/// The commands of the README's "Everyday loop" block, and its post-receive hook line.
fn readme_loop() -> (Vec<String>, String) {
    let section = README
        .split("\n## Everyday loop\n")
        .nth(1)
        .expect("a README section `## Everyday loop`");
    let mut blocks = section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap());
    let commands = blocks
        .next()
        .expect("the loop's command block")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let hook = blocks
        .next()
        .expect("the post-receive hook block")
        .lines()
        .find(|l| l.contains("slipway hook"))
        .expect("the hook's command")
        .to_string();
    (commands, hook)
}

/// The developer's machine: its own HOME and working directory, `slipway` on PATH.
struct Desk {
    home: tempfile::TempDir,
    cwd: tempfile::TempDir,
    /// What the README writes, and what it is here.
    substitutions: Vec<(String, String)>,
}

impl Desk {
    fn new(substitutions: Vec<(String, String)>) -> Desk {
        Desk {
            home: tempfile::tempdir().unwrap(),
            cwd: tempfile::tempdir().unwrap(),
            substitutions,
        }
    }

    fn config_home(&self) -> PathBuf {
        self.home.path().join(".config")
    }

    fn line(&self, line: &str) -> String {
        let mut line = line.to_string();
        for (from, to) in &self.substitutions {
            line = line.replace(from, to);
        }
        line
    }

    /// `sh -c LINE` (README spelling substituted) in `dir`, with only this desk's
    /// environment (and `extra`).
    fn command(&self, line: &str, dir: &Path, extra: &[(&str, &str)]) -> Command {
        let path = format!(
            "{}:{}",
            slipway_bin().parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(self.line(line))
            .current_dir(dir)
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.config_home())
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `line` with `input` on stdin (killed if it takes two minutes); its output.
    fn run_in(&self, line: &str, dir: &Path, input: &str, extra: &[(&str, &str)]) -> Output {
        let files = tempfile::tempdir().unwrap();
        let (out, err) = (files.path().join("out"), files.path().join("err"));
        let mut cmd = self.command(line, dir, extra);
        cmd.stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        let mut child = Killed::spawn(&mut cmd);
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        let status = wait_exit(&mut child, Duration::from_secs(120));
        Output {
            status,
            stdout: std::fs::read(&out).unwrap(),
            stderr: std::fs::read(&err).unwrap(),
        }
    }

    /// `line`, which must succeed; stdout and stderr together.
    fn ok(&self, line: &str, input: &str) -> String {
        self.ok_in(line, self.cwd.path(), input)
    }

    fn ok_in(&self, line: &str, dir: &Path, input: &str) -> String {
        let out = self.run_in(line, dir, input, &[]);
        let text = both(&out);
        assert!(out.status.success(), "{}: {text}", self.line(line));
        text
    }

    /// `line`, which must fail; stdout and stderr together.
    fn fails(&self, line: &str, extra: &[(&str, &str)]) -> String {
        let out = self.run_in(line, self.cwd.path(), "", extra);
        let text = both(&out);
        assert!(
            !out.status.success(),
            "{} succeeded: {text}",
            self.line(line)
        );
        text
    }
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Directories named `slipway-data` under `root`.
fn data_dirs_under(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if entry.file_name() == "slipway-data" {
                    found.push(path.clone());
                }
                todo.push(path);
            }
        }
    }
    found
}

fn pipeline(marker: &Path) -> String {
    format!(
        "on:\n  push: {{ branches: [main] }}\nstages:\n  build:\n    steps:\n      - name: compile\n        \
         run: echo building the app\n  test:\n    needs: [build]\n    steps:\n      - name: unit\n        \
         run: |\n          if [ -e {m} ]; then echo waiting for cancel; sleep 600; fi\n          \
         printf '\\033[31merror: 1 test failed\\033[0m\\n'\n          exit 1\n",
        m = marker.display()
    )
}

#[test]
fn the_readmes_everyday_loop_works_through_the_api_from_a_fresh_home() {
    let (commands, hook_line) = readme_loop();
    let mut p = Processes::new();
    p.start_server("server");
    let server = p.url("");
    let bare = p.dir.path().join("forge/app.git");
    let desk = Desk::new(vec![
        ("https://ci.example.com".into(), server.clone()),
        ("/var/lib/slipway".into(), p.data().display().to_string()),
        ("/srv/git/app.git".into(), bare.display().to_string()),
    ]);
    let marker = p.dir.path().join("rerun-waits");
    let checkout = desk.cwd.path().join("app");
    let mut login_token = String::new();
    let mut hook_token = String::new();
    let mut laptop_id = String::new();

    for line in &commands {
        let said = if line.starts_with("slipway user add") {
            desk.ok(line, "a long first password\n")
        } else if line.starts_with("slipway token create laptop") {
            let out = desk.ok(line, "");
            login_token = out
                .lines()
                .find(|l| l.starts_with("slpu_"))
                .unwrap_or_else(|| panic!("no token in {out}"))
                .to_string();
            out
        } else if line.starts_with("slipway login") {
            let out = desk.ok(line, &format!("{login_token}\n"));
            assert!(
                out.contains("logged in to") && out.contains("user admin"),
                "{out}"
            );
            let file = desk.config_home().join("slipway/config.toml");
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&file), 0o600, "the login file is private");
            assert_eq!(mode(file.parent().unwrap()), 0o700);
            let stored = std::fs::read_to_string(&file).unwrap();
            assert!(stored.contains(&server) && stored.contains(&login_token));
            // SLIPWAY_TOKEN wins over the stored token; SLIPWAY_SERVER over the URL,
            // and the stored token never goes to another server.
            let refused = desk.fails(
                "slipway repo list",
                &[("SLIPWAY_TOKEN", "slpu_not-a-token")],
            );
            assert!(refused.contains("401"), "{refused}");
            let elsewhere = desk.fails(
                "slipway repo list",
                &[("SLIPWAY_SERVER", "http://127.0.0.1:9")],
            );
            assert!(
                elsewhere.contains("no token for http://127.0.0.1:9"),
                "{elsewhere}"
            );
            out
        } else if line.starts_with("slipway repo add") {
            std::fs::create_dir_all(&bare).unwrap();
            git(&bare, &["init", "-q", "--bare"]);
            let out = desk.ok(line, "");
            assert!(
                out.contains(&format!("webhook url:    {server}/hooks/git/team/app")),
                "the server's own webhook URL: {out}"
            );
            // The rest of the repository's commands, through the API too.
            let shown = desk.ok("slipway repo show team/app", "");
            assert!(shown.contains("trusted:        false"), "{shown}");
            let edited = desk.ok("slipway repo edit team/app --trusted true", "");
            assert!(edited.contains("trusted:        true"), "{edited}");
            let set = desk.ok("slipway secret set team/app DEPLOY_KEY", "s3cret-value\n");
            assert!(set.contains("set secret DEPLOY_KEY of team/app"), "{set}");
            let listed = desk.ok("slipway secret list team/app", "");
            assert_eq!(listed.trim(), "DEPLOY_KEY\tno pull requests");
            desk.ok("slipway secret rm team/app DEPLOY_KEY", "");
            let listed = desk.ok("slipway secret list team/app", "");
            assert!(!listed.contains("DEPLOY_KEY"), "{listed}");
            out
        } else if line.starts_with("slipway token create git-hook") {
            let out = desk.ok(line, "");
            hook_token = out
                .lines()
                .find(|l| l.starts_with("slp_"))
                .unwrap_or_else(|| panic!("no token in {out}"))
                .to_string();
            let hook = desk.line(&hook_line).replace("slp_…", &hook_token);
            let path = bare.join("hooks/post-receive");
            std::fs::write(&path, format!("#!/bin/sh\n{hook}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            out
        } else if line.starts_with("git push") {
            git(
                desk.cwd.path(),
                &["clone", "-q", bare.to_str().unwrap(), "app"],
            );
            std::fs::write(checkout.join(".slipway.yml"), pipeline(&marker)).unwrap();
            git(&checkout, &["add", "-A"]);
            git(&checkout, &["commit", "-qm", "First commit"]);
            git(&checkout, &["branch", "-M", "main"]);
            let out = desk.ok_in(line, &checkout, "");
            assert!(out.contains("run #1"), "the hook's answer: {out}");
            out
        } else if line.starts_with("slipway runs list") {
            let out = desk.ok(line, "");
            assert!(out.contains("team/app\t#1\t"), "{out}");
            // Every repository's runs, narrowed by branch.
            let all = desk.ok("slipway runs list --branch main", "");
            assert!(all.contains("team/app\t#1\t"), "{all}");
            let none = desk.ok("slipway runs list --branch nope", "");
            assert!(!none.contains("#1"), "{none}");
            out
        } else if line.starts_with("slipway logs team/app 1 -f") {
            // Follows to the end of the run: every step's lines, then it exits.
            let out = desk.ok(line, "");
            assert!(out.contains("building the app"), "{out}");
            assert!(out.contains("error: 1 test failed"), "{out}");
            assert!(
                !out.contains('\x1b'),
                "no colour codes into a pipe: {out:?}"
            );
            // On a terminal (util-linux `script` gives it one) the step's colours stay.
            let tty = desk.ok(
                "env -u NO_COLOR script -qec 'slipway logs team/app 1 test unit' /dev/null",
                "",
            );
            assert!(tty.contains("\x1b[31merror: 1 test failed"), "{tty:?}");
            out
        } else if line.starts_with("slipway runs show team/app 1") {
            let out = desk.ok(line, "");
            assert!(out.contains("team/app #1: failure"), "{out}");
            assert!(out.contains("step compile  success"), "{out}");
            assert!(out.contains("failed: stage test, step unit"), "{out}");
            assert!(
                out.contains("| error: 1 test failed"),
                "the failing step's last lines: {out}"
            );
            out
        } else if line.starts_with("slipway rerun team/app 1 --failed") {
            // This time the test step runs until it is cancelled.
            std::fs::write(&marker, "").unwrap();
            let out = desk.ok(line, "");
            assert!(out.contains("run #2 of team/app re-runs #1"), "{out}");
            out
        } else if line.starts_with("slipway cancel team/app 2") {
            eventually_blocking("run #2's test step to run", Duration::from_secs(90), || {
                let out = desk.run_in(
                    "slipway logs team/app 2 test unit",
                    desk.cwd.path(),
                    "",
                    &[],
                );
                let text = both(&out);
                if text.contains("waiting for cancel") {
                    Ok(())
                } else {
                    Err(text)
                }
            });
            // A follower of the running step is live, and ends when the run does.
            let files = tempfile::tempdir().unwrap();
            let followed = files.path().join("followed");
            let mut follower = desk.command("slipway logs team/app 2 -f", desk.cwd.path(), &[]);
            follower
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&followed).unwrap());
            let mut follower = Killed::spawn(&mut follower);
            eventually_blocking(
                "the follower to print the running step",
                Duration::from_secs(30),
                || {
                    let text = std::fs::read_to_string(&followed).unwrap_or_default();
                    if text.contains("waiting for cancel") {
                        Ok(())
                    } else {
                        Err(text)
                    }
                },
            );
            assert!(
                follower.try_wait().unwrap().is_none(),
                "it follows while the step runs"
            );
            let out = desk.ok(line, "");
            assert!(out.contains("run #2 of team/app is cancelled"), "{out}");
            let status = wait_exit(&mut follower, Duration::from_secs(30));
            assert!(status.success(), "{status}");
            let shown = desk.ok("slipway runs show team/app 2", "");
            assert!(shown.contains("team/app #2: cancelled"), "{shown}");
            // Only the failed stage ran again.
            let runs = desk.ok("slipway runs list --repo team/app --status cancelled", "");
            assert!(runs.contains("#2") && !runs.contains("#1"), "{runs}");
            out
        } else if line == "slipway token list" {
            let out = desk.ok(line, "");
            laptop_id = out
                .lines()
                .find(|l| l.contains("\tlaptop\t"))
                .unwrap_or_else(|| panic!("no laptop token in {out}"))
                .split('\t')
                .next()
                .unwrap()
                .to_string();
            out
        } else if line.starts_with("slipway token revoke") {
            assert_eq!(
                line,
                &format!("slipway token revoke {laptop_id}"),
                "the README revokes the laptop token"
            );
            let out = desk.ok(line, "");
            assert!(
                out.contains(&format!("revoked token {laptop_id} of admin")),
                "{out}"
            );
            let refused = desk.fails("slipway runs list", &[]);
            assert!(
                refused.contains("401") && refused.contains("unknown token"),
                "{refused}"
            );
            out
        } else {
            panic!("a README line this test does not play: {line}");
        };
        // The token is printed once, by the command that made it, and never echoed.
        assert!(
            login_token.is_empty()
                || !said.contains(&login_token)
                || line.contains("token create laptop"),
            "{line}: {said}"
        );
    }
    assert!(
        !hook_token.is_empty() && !laptop_id.is_empty(),
        "the loop ran to its end"
    );

    for root in [desk.home.path(), desk.cwd.path()] {
        assert_eq!(
            data_dirs_under(root),
            Vec::<PathBuf>::new(),
            "under {}",
            root.display()
        );
    }
    assert_eq!(data_dirs_under(p.dir.path()), Vec::<PathBuf>::new());
    assert!(p.data().join("slipway.db").exists());
}

/// `slipway logout` removes the login; afterwards the API commands say to log in.
#[test]
fn without_a_login_api_commands_say_to_run_slipway_login() {
    let desk = Desk::new(Vec::new());
    let said = desk.fails("slipway runs list", &[]);
    assert!(said.contains("slipway login"), "{said}");
    let said = desk.fails("slipway repo list", &[]);
    assert!(said.contains("slipway login"), "{said}");
    let said = desk.ok("slipway logout", "");
    assert!(said.contains("not logged in"), "{said}");
    // A database command never guesses a data dir in the current directory.
    let said = desk.fails("slipway user list", &[]);
    assert!(said.contains("--data-dir"), "{said}");
    let said = desk.fails("slipway migrate", &[]);
    assert!(said.contains("--data-dir"), "{said}");
    // `migrate` needs only the database: a URL alone is enough.
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/db/slipway.db?mode=rwc", db.path().display());
    let said = desk.ok(&format!("slipway migrate --database-url '{url}'"), "");
    assert!(said.contains("migrations applied"), "{said}");
    assert!(db.path().join("db/slipway.db").exists());
    assert_eq!(data_dirs_under(desk.cwd.path()), Vec::<PathBuf>::new());
    assert_eq!(std::fs::read_dir(desk.cwd.path()).unwrap().count(), 0);
}

/// Each command's `--help` lists its own flags only, each with a sentence.
#[test]
fn each_commands_help_lists_only_its_own_flags() {
    let api = ["--server", "--token-env"];
    let db = ["--data-dir", "--database-url", "--config"];
    let target: Vec<&str> = api.iter().chain(db.iter()).copied().collect();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("login", vec!["--token-stdin"]),
        ("logout", vec![]),
        (
            "repo add",
            [
                &[
                    "--forge",
                    "--clone-url",
                    "--default-branch",
                    "--trusted",
                    "--forge-token-env",
                    "--api-url",
                ][..],
                &target,
            ]
            .concat(),
        ),
        ("repo list", target.clone()),
        ("repo show", target.clone()),
        (
            "repo edit",
            [
                &[
                    "--default-branch",
                    "--trusted",
                    "--clone-url",
                    "--forge-token-env",
                    "--no-forge-token",
                    "--api-url",
                    "--no-api-url",
                ][..],
                &target,
            ]
            .concat(),
        ),
        ("repo rm", target.clone()),
        (
            "secret set",
            [&["--value-env", "--allow-pull-requests"][..], &target].concat(),
        ),
        ("secret list", target.clone()),
        ("secret rm", target.clone()),
        (
            "token create",
            [&["--scope", "--user", "--owner", "--repo"][..], &target].concat(),
        ),
        (
            "token list",
            [&["--user", "--machine"][..], &target].concat(),
        ),
        (
            "token revoke",
            [&["--user", "--machine"][..], &target].concat(),
        ),
        (
            "runs list",
            [&["--repo", "--status", "--branch", "--limit"][..], &api].concat(),
        ),
        ("runs show", api.to_vec()),
        ("logs", [&["--follow"][..], &api].concat()),
        (
            "trigger",
            [&["--branch", "--pipeline", "--param"][..], &api].concat(),
        ),
        (
            "run trigger",
            [&["--branch", "--pipeline", "--param"][..], &api].concat(),
        ),
        ("cancel", api.to_vec()),
        ("rerun", [&["--failed"][..], &api].concat()),
        ("migrate", db.to_vec()),
        ("user add", [&["--role", "--repo"][..], &db].concat()),
        ("user list", db.to_vec()),
    ];
    for (command, expected) in cases {
        let out = crate::support::process::slipway()
            .args(command.split(' '))
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{command} --help: {help}");
        let options = help
            .split("Options:")
            .nth(1)
            .unwrap_or_else(|| panic!("{command}: {help}"));
        let lines: Vec<&str> = options.lines().collect();
        let mut listed = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            if !t.starts_with('-') {
                continue;
            }
            let long = t
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .unwrap_or_else(|| panic!("{command}: {l}"))
                .split('=')
                .next()
                .unwrap()
                .to_string();
            if long == "--help" {
                continue;
            }
            // The sentence follows the flag on its line, or on the next (long help).
            let same_line = t.split("  ").skip(1).any(|w| w.trim().len() > 10);
            let next_line = lines
                .get(i + 1)
                .map(|n| n.trim_start())
                .is_some_and(|n| !n.starts_with('-') && n.len() > 10);
            assert!(
                same_line || next_line,
                "{command}: {long} has no sentence: {l}"
            );
            listed.push(long);
        }
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        listed.sort();
        assert_eq!(listed, want, "{command} --help:\n{help}");
    }
}
