//! Keyboard shortcuts in a real headless Chromium against the real `slipway server`,
//! pressed as real key events (WebDriver actions): `j`/`k` move through the
//! dashboard's runs and a run's stages and `Enter` opens the run; `?` shows the list
//! and `Escape` closes it; `g` `l` opens the failing step's log from a failed run;
//! `/` goes to the log's search; a `j` typed into a field is text, not a shortcut.
//! The script is our own and runs under the page's strict CSP (no inline script).

use std::time::Duration;

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;

use crate::support::browser::Browser;
use crate::support::ui::{PASSWORD, Ui};

const WAIT: Duration = Duration::from_secs(60);

/// Presses and releases each key, in order, as a person types them.
async fn keys(b: &Browser, typed: &[char]) {
    let mut actions = KeyActions::new("keyboard".into());
    for &c in typed {
        actions = actions
            .then(KeyAction::Down { value: c })
            .then(KeyAction::Up { value: c });
    }
    b.client.perform_actions(actions).await.unwrap();
}

/// The focused element: its tag, and its text.
async fn focused(b: &Browser) -> String {
    b.js("const e = document.activeElement; return e.tagName + ' ' + (e.innerText || e.value || '').trim()")
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

const FAILING: &str = r#"stages:
  build:
    steps: [echo built]
  lint:
    steps: [echo clean]
  test:
    needs: [build]
    steps:
      - name: unit tests
        run: |
          echo "error: the widget is broken"
          exit 2
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortcuts_move_through_lists_open_logs_and_search() {
    let ui = Ui::start(&[("dev", "developer")]).await;
    ui.push("stages:\n  build:\n    steps: [echo ok]\n", "1")
        .await;
    ui.wait_status(1, "success").await;
    ui.push(FAILING, "2").await;
    ui.wait_status(2, "failure").await;

    let b = Browser::start().await;
    b.sign_in(&ui.base(), "dev", PASSWORD).await;
    b.goto(&ui.base()).await;
    // j, j: the second run in the list (the older); k: back to the newest.
    keys(&b, &['j', 'j']).await;
    let at = focused(&b).await;
    assert!(at.starts_with("A ") && at.contains("#1"), "{at}");
    assert!(b.has("#runs tbody tr.kb-current").await);
    keys(&b, &['k']).await;
    let at = focused(&b).await;
    assert!(at.contains("#2"), "{at}");
    b.screenshot("keyboard-dashboard-desktop").await;
    // Enter opens the run the focus is on.
    b.client
        .perform_actions(
            KeyActions::new("keyboard".into())
                .then(KeyAction::Down {
                    value: Key::Enter.into(),
                })
                .then(KeyAction::Up {
                    value: Key::Enter.into(),
                }),
        )
        .await
        .unwrap();
    b.wait_text(".crumbs", "run #2", WAIT).await;

    // On the run: j moves through the stages, in page order.
    keys(&b, &['j', 'j']).await;
    let current = b
        .js("return document.querySelector('.stages .stage.kb-current').id")
        .await;
    let second = b
        .js("return document.querySelectorAll('.stages .stage')[1].id")
        .await;
    assert_eq!(current, second);
    // ? shows the shortcuts; Escape closes them.
    keys(&b, &['?']).await;
    assert_eq!(
        b.js("return document.getElementById('shortcuts').open")
            .await,
        true
    );
    let help = b.read("#shortcuts").await;
    assert!(
        help.contains("search the log") && help.contains("next / previous"),
        "{help}"
    );
    b.screenshot("keyboard-shortcuts-desktop").await;
    b.client
        .perform_actions(
            KeyActions::new("keyboard".into())
                .then(KeyAction::Down {
                    value: Key::Escape.into(),
                })
                .then(KeyAction::Up {
                    value: Key::Escape.into(),
                }),
        )
        .await
        .unwrap();
    assert_eq!(
        b.js("return document.getElementById('shortcuts').open")
            .await,
        false
    );

    // g l: the failing step's log; / goes to its search, where j is just a letter.
    keys(&b, &['g', 'l']).await;
    b.wait_text(".crumbs", "unit tests", WAIT).await;
    b.wait_text("#log", "the widget is broken", WAIT).await;
    keys(&b, &['/']).await;
    assert_eq!(
        b.js("return document.activeElement.name").await,
        "q",
        "the search field has the focus"
    );
    keys(&b, &['w', 'i', 'j']).await;
    assert_eq!(
        b.js("return document.activeElement.value").await,
        "wij",
        "typed into the field, not taken as shortcuts"
    );
    assert!(!b.has(".kb-current").await);
    // The page's policy allows no inline script: the shortcuts are the page's own file.
    let csp = b
        .js("return fetch(location.href).then(r => r.headers.get('content-security-policy'))")
        .await;
    assert!(csp.as_str().unwrap().contains("script-src 'self'"), "{csp}");
    b.close().await;
}
