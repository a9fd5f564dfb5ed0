//! A newcomer starts the server and reads its log: it says where the data is, where
//! the UI is, and — while nobody can sign in — the command that makes the first admin.
//! That command, copied from the log as written, works; afterwards the hint is gone.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::poll::eventually_blocking;
use crate::support::process::{Processes, slipway_bin};

fn log_text(env: &Processes) -> String {
    std::fs::read_to_string(env.log_path("server")).unwrap_or_default()
}

#[test]
fn the_start_up_log_says_where_the_data_is_and_what_to_do_next() {
    let mut env = Processes::new();
    env.start_server("server");
    let data = env.data();
    let log = eventually_blocking("the first-admin hint", Duration::from_secs(30), || {
        let log = log_text(&env);
        if log.contains("no user yet") {
            Ok(log)
        } else {
            Err(log)
        }
    });
    assert!(
        log.contains(&format!("data_dir={}", data.display())),
        "{log}"
    );
    assert!(
        log.contains(&format!("web UI and API: {}", env.url(""))),
        "{log}"
    );
    let hint = log
        .lines()
        .find(|l| l.contains("no user yet"))
        .unwrap()
        .to_string();
    assert!(
        hint.contains(&format!("sign in at {}/login", env.url(""))),
        "{hint}"
    );
    let command = hint
        .split('`')
        .nth(1)
        .expect("the command between backticks");
    assert_eq!(
        command,
        format!(
            "slipway user add admin --role admin --data-dir {}",
            data.display()
        )
    );
    env.kill("server");

    // As written, from another directory, with none of the server's environment.
    let path = format!(
        "{}:{}",
        slipway_bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let mut child = Command::new("sh")
        .args(["-c", command])
        .current_dir(elsewhere.path())
        .env_clear()
        .env("PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long first password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "nothing is created where the command ran"
    );

    env.start_server("server");
    let users = env.cli(&["user", "list"]);
    assert!(users.contains("admin"), "{users}");
    let starts = log_text(&env).matches("web UI and API").count();
    assert_eq!(starts, 2, "{}", log_text(&env));
    assert_eq!(
        log_text(&env).matches("no user yet").count(),
        1,
        "the hint is gone once there is a user"
    );
}
