//! The README's test command is one command that needs nothing run before it: `./test.sh`
//! installs and starts what the tests need (`.ci/setup.sh`) and then runs them, and CI
//! (`.ci/run`) calls exactly that command, so a developer's run and CI's cannot drift.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The commands a script runs: its lines without comments and blank lines.
fn commands(script: &str) -> Vec<String> {
    script
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The first `sh` block after the paragraph that starts "Run the tests".
fn readme_test_command() -> Vec<String> {
    let readme = read("README.md");
    let at = readme
        .find("\nRun the tests")
        .expect("README.md has a \"Run the tests\" paragraph");
    let rest = &readme[at..];
    let open = rest.find("```sh\n").expect("a ```sh block after it") + "```sh\n".len();
    let close = rest[open..].find("```").expect("the block ends") + open;
    commands(&rest[open..close])
}

#[test]
fn the_readme_test_command_is_the_one_ci_runs() {
    let cmd = readme_test_command();
    assert_eq!(cmd, ["./test.sh"], "README's test command is one command");
    let ci = commands(&read(".ci/run"));
    assert!(
        ci.iter().any(|l| l == &cmd[0]),
        ".ci/run must call `{}` as written; it runs {ci:?}",
        cmd[0]
    );
    assert!(
        !ci.iter().any(|l| l.contains("nextest")),
        ".ci/run must not run the tests its own way: {ci:?}"
    );
}

#[test]
fn the_test_command_sets_up_before_it_tests() {
    let script = commands(&read("test.sh"));
    let setup = script
        .iter()
        .position(|l| l == "bash .ci/setup.sh")
        .expect("test.sh runs .ci/setup.sh");
    let tests = script
        .iter()
        .position(|l| l.contains("cargo nextest run --workspace"))
        .expect("test.sh runs every test");
    assert!(setup < tests, "set-up comes first: {script:?}");
    assert!(
        script[tests].ends_with("\"$@\""),
        "README says arguments go on to nextest: {}",
        script[tests]
    );

    // Every service script is part of the set-up, so nothing the tests need is left to CI.
    let setup_lines = commands(&read(".ci/setup.sh"));
    for entry in std::fs::read_dir(root().join(".ci")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".sh") && name != "setup.sh" {
            let call = format!("bash .ci/{name}");
            assert!(
                setup_lines.contains(&call),
                ".ci/setup.sh must run .ci/{name}"
            );
        }
    }

    for script in ["test.sh", ".ci/setup.sh", ".ci/run"] {
        let out = Command::new("bash")
            .arg("-n")
            .arg(root().join(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
