//! The server masks what it stores, too: log lines, outputs and reasons a runner sends
//! pass through the repository's masker ([`runner::Masker`], the one runners use) on
//! arrival. A runner masks before anything leaves it, but the server cannot tell a
//! well-behaved runner from a modified one, so a secret never reaches the log store
//! or the database in the clear, whoever sent it.
//!
//! The masker covers every secret of the repository (not only those the stage
//! references: a runner may echo any value it was given). It is read for each report,
//! so a secret added or changed mid-run is covered at once; the compiled masker is
//! kept per repository while its sealed secrets stay the same (a changed secret is
//! sealed anew, with a fresh nonce, so it never looks the same).

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};

use runner::Masker;
use sha2::{Digest, Sha256};

use crate::api::error::ApiResult;
use crate::daemon::state::AppState;
use crate::store::RepoId;

/// Per repository: a digest of its sealed secrets, and the masker compiled from them.
type Compiled = HashMap<RepoId, ([u8; 32], Masker)>;

/// The masker over every secret of repository `repo`. A secret that no longer opens
/// with the server's key is skipped (the lease refuses such a stage anyway).
pub(crate) async fn repo_masker(state: &AppState, repo: RepoId) -> ApiResult<Masker> {
    static COMPILED: LazyLock<Mutex<Compiled>> = LazyLock::new(Default::default);
    let stored = state.store.get_secret_values_enc(repo).await?;
    let mut digest = Sha256::new();
    for secret in &stored {
        for part in [secret.name.as_bytes(), &secret.value_enc] {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part);
        }
    }
    let digest: [u8; 32] = digest.finalize().into();
    let lock = || COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((seen, masker)) = lock().get(&repo)
        && *seen == digest
    {
        return Ok(masker.clone());
    }
    let mut values = Vec::with_capacity(stored.len());
    for secret in stored {
        let aad = crate::crypto::secret_aad(repo, &secret.name);
        if let Ok(plain) = state.secret_box.open(&secret.value_enc, &aad)
            && let Ok(text) = String::from_utf8(plain.to_vec())
        {
            values.push(text);
        }
    }
    let masker = Masker::new(&values);
    lock().insert(repo, (digest, masker.clone()));
    Ok(masker)
}

/// Masks each output value in place.
pub(crate) fn mask_outputs(masker: &Masker, outputs: &mut BTreeMap<String, String>) {
    if masker.is_empty() {
        return;
    }
    for value in outputs.values_mut() {
        *value = mask_multiline(masker, value);
    }
}

/// Masks a text that may span lines (an output, a reason) line by line, as the
/// masker's patterns are per line.
pub(crate) fn mask_multiline(masker: &Masker, text: &str) -> String {
    text.split('\n')
        .map(|line| masker.mask_str(line))
        .collect::<Vec<_>>()
        .join("\n")
}
