//! What the other modules rely on `support` for: waits that end in time and say what
//! they saw, throw-away databases that go away even when a test fails, and
//! `both_databases!` giving each case the database it names.

use std::time::{Duration, Instant};

use server::store::Dialect;
use sqlx::Connection;

use crate::support::both_databases;
use crate::support::db::{PgDatabase, pg_server};
use crate::support::poll::{eventually, eventually_blocking, poll_until};
use crate::support::test_server::TestServer;

#[tokio::test]
async fn a_wait_ends_in_time_with_the_last_state_it_saw() {
    let started = Instant::now();
    let mut polls = 0;
    let timed_out = poll_until(Duration::from_millis(300), || {
        polls += 1;
        let seen = polls;
        async move { Err::<(), _>(seen) }
    })
    .await
    .unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(timed_out.state, polls);
    assert_eq!(timed_out.polls, polls);
    assert!(polls > 2, "polled {polls} times");
}

#[tokio::test]
async fn a_wait_returns_what_the_check_found() {
    let mut polls = 0;
    let found = eventually("the third poll", Duration::from_secs(5), || {
        polls += 1;
        let n = polls;
        async move { if n == 3 { Ok("found") } else { Err(n) } }
    })
    .await;
    assert_eq!((found, polls), ("found", 3));
}

#[tokio::test]
#[should_panic(expected = "timed out waiting for the light to turn green")]
async fn a_timed_out_wait_names_what_it_waited_for() {
    eventually(
        "the light to turn green",
        Duration::from_millis(50),
        || async { Err::<(), _>("red") },
    )
    .await;
}

#[test]
#[should_panic(expected = "last seen:\nred")]
fn a_timed_out_blocking_wait_shows_the_last_state() {
    eventually_blocking("the light to turn green", Duration::from_millis(50), || {
        Err::<(), _>("red")
    });
}

/// Whether the PostgreSQL server has the database of this URL.
async fn exists(url: &str) -> bool {
    let name = url.rsplit_once('/').unwrap().1.split('?').next().unwrap();
    let mut admin = sqlx::PgConnection::connect(&pg_server()).await.unwrap();
    let found: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut admin)
        .await
        .unwrap();
    found.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throw_away_database_goes_with_its_guard_even_when_the_test_fails() {
    let kept = PgDatabase::create().await;
    assert!(exists(&kept.url).await);
    let url = kept.url.clone();
    drop(kept);
    assert!(!exists(&url).await, "{url} left behind");

    // A failing test: the guard is dropped while the panic unwinds.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let failing = tokio::spawn(async move {
        let db = PgDatabase::create().await;
        tx.send(db.url.clone()).unwrap();
        panic!("the test failed");
    });
    assert!(failing.await.unwrap_err().is_panic());
    let url = rx.await.unwrap();
    assert!(!exists(&url).await, "{url} left behind by a failed test");
}

both_databases!(each_case_runs_on_the_database_it_is_given);

async fn each_case_runs_on_the_database_it_is_given(db: Dialect) {
    let server = TestServer::builder().on(db).build().await;
    assert_eq!(server.state.store.dialect(), db);
    let url = server.state.config.database_url.clone();
    match db {
        Dialect::Sqlite => assert!(url.starts_with("sqlite:"), "{url}"),
        Dialect::Postgres => assert!(url.starts_with("postgres"), "{url}"),
    }
}
