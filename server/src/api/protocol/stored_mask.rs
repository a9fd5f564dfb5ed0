//! The server masks what it stores, too: log lines, outputs and reasons a runner sends
//! pass through the repository's masker ([`runner::Masker`], the one runners use) on
//! arrival. A runner masks before anything leaves it, but the server cannot tell a
//! well-behaved runner from a modified one, so a secret never reaches the log store
//! or the database in the clear, whoever sent it.
//!
//! The masker covers every secret of the repository (not only those the stage
//! references: a runner may echo any value it was given), decrypted afresh for each
//! report, so a secret added or changed mid-run is covered at once.

use std::collections::BTreeMap;

use runner::Masker;

use crate::api::error::ApiResult;
use crate::daemon::state::AppState;
use crate::store::RepoId;

/// The masker over every secret of repository `repo`. A secret that no longer opens
/// with the server's key is skipped (the lease refuses such a stage anyway).
pub(crate) async fn repo_masker(state: &AppState, repo: RepoId) -> ApiResult<Masker> {
    let stored = state.store.get_secret_values_enc(repo).await?;
    let mut values = Vec::with_capacity(stored.len());
    for secret in stored {
        let aad = crate::crypto::secret_aad(repo, &secret.name);
        if let Ok(plain) = state.secret_box.open(&secret.value_enc, &aad)
            && let Ok(text) = String::from_utf8(plain.to_vec())
        {
            values.push(text);
        }
    }
    Ok(Masker::new(&values))
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
