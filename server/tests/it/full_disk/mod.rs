//! A full data disk (issue #17, item 1), on real filesystems that fill: a tmpfs of a
//! few MiB mounted for the test (`support::tmpfs`; the tests run as root).
//!
//! `store`: the store alone — a write that fails for want of space keeps nothing and
//! poisons nothing.

mod store;

use std::path::Path;

use server::store::{ForgeKind, NewRepo, Store};

use crate::support::tmpfs::Tmpfs;

pub(crate) fn new_repo(name: &str) -> NewRepo {
    NewRepo {
        name: name.to_string(),
        forge: ForgeKind::Github,
        clone_url: format!("https://example.com/{name}.git"),
        default_branch: "main".into(),
        webhook_secret_enc: vec![1, 2, 3],
        forge_token_enc: None,
        trusted: false,
    }
}

/// A tmpfs of `bytes` in a temp dir, and a migrated SQLite store on it.
pub(crate) async fn full_tmpfs_store(bytes: u64) -> (Mounted, Store) {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("disk"), bytes);
    let url = sqlite_url(fs.path());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (Mounted { fs, _dir: dir }, store)
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("slipway.db").display())
}

/// A tmpfs and the temp dir it is mounted in (unmounted first, then removed).
pub(crate) struct Mounted {
    fs: Tmpfs,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Mounted {
    type Target = Tmpfs;
    fn deref(&self) -> &Tmpfs {
        &self.fs
    }
}
