//! Where `slipway login` keeps the server's URL and the token:
//! `$XDG_CONFIG_HOME/slipway/config.toml`, else `~/.config/slipway/config.toml`. The
//! directory is made 0700 and the file 0600 (written to a temporary file beside it and
//! renamed, so a reader never sees half a file and the token is never world-readable,
//! not even for an instant).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// What `slipway login` stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The server's URL, without a trailing slash.
    pub server: String,
    pub token: String,
}

impl Drop for Credentials {
    fn drop(&mut self) {
        self.token.zeroize();
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The file's path (it may not exist).
pub fn path() -> anyhow::Result<PathBuf> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let dir = match (nonempty("XDG_CONFIG_HOME"), nonempty("HOME")) {
        (Some(config), _) => PathBuf::from(config),
        (None, Some(home)) => PathBuf::from(home).join(".config"),
        (None, None) => bail!("neither XDG_CONFIG_HOME nor HOME is set: no place for the login"),
    };
    Ok(dir.join("slipway").join("config.toml"))
}

/// The stored login, if there is one.
pub fn load() -> anyhow::Result<Option<Credentials>> {
    let path = path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let creds: Credentials = toml::from_str(&text).with_context(|| {
        format!(
            "{} is not a login file; remove it with `slipway logout`",
            path.display()
        )
    })?;
    Ok(Some(creds))
}

/// Stores `creds`, replacing any earlier login; returns the file's path.
pub fn store(creds: &Credentials) -> anyhow::Result<PathBuf> {
    let path = path()?;
    let dir = path.parent().context("the login file's directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    // An existing directory keeps its mode from `create`: make it private anyway.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    let text = Zeroizing::new(toml::to_string(creds)?);
    let tmp = dir.join(format!(".config.toml.{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(path)
}

/// Removes the stored login; its path if there was one.
pub fn remove() -> anyhow::Result<Option<PathBuf>> {
    let path = path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(Some(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
