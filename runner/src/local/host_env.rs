//! The host variables a local step gets besides its own: the toolchain locations that
//! tools find through the environment. A step's `HOME` is a fresh directory, so rustup
//! and cargo would look for `~/.rustup` and `~/.cargo` there and find nothing; they get
//! the real locations instead. Other tools (`NVM_DIR`, `JAVA_HOME`, `GOPATH`, …) are
//! passed when the runner's allow-list names them.
//!
//! This is convenience, not isolation: local steps run as the runner's user and can
//! read what it can. Isolation is the Docker and Kubernetes backends' job.

use std::collections::BTreeMap;
use std::path::Path;

/// Always passed, or derived from the real home when unset and present there.
pub const TOOLCHAIN_VARS: &[(&str, &str)] = &[("RUSTUP_HOME", ".rustup"), ("CARGO_HOME", ".cargo")];

/// The toolchain variables plus every variable `extra` names, with their values from
/// `lookup` (the process environment, in production). Unset names are skipped, and so
/// are values that are not UTF-8.
pub fn host_env(
    extra: &[String],
    lookup: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let home = lookup("HOME").filter(|h| !h.is_empty());
    for (name, under_home) in TOOLCHAIN_VARS {
        let value = lookup(name).filter(|v| !v.is_empty()).or_else(|| {
            let dir = Path::new(home.as_deref()?).join(under_home);
            dir.is_dir().then(|| dir.to_string_lossy().into_owned())
        });
        if let Some(v) = value {
            env.insert((*name).to_string(), v);
        }
    }
    for name in extra {
        if let Some(v) = lookup(name) {
            env.insert(name.clone(), v);
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toolchains_are_found_in_the_real_home_and_the_allow_list_is_passed() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".rustup")).unwrap();
        let home_s = home.path().to_string_lossy().into_owned();
        let vars = BTreeMap::from([
            ("HOME".to_string(), home_s.clone()),
            ("CARGO_HOME".to_string(), "/opt/cargo".to_string()),
            ("NVM_DIR".to_string(), "/opt/nvm".to_string()),
            ("DATABASE_URL".to_string(), "postgres://secret".to_string()),
        ]);
        let env = host_env(&["NVM_DIR".into(), "UNSET".into()], |k| {
            vars.get(k).cloned()
        });
        assert_eq!(
            env,
            BTreeMap::from([
                ("CARGO_HOME".to_string(), "/opt/cargo".to_string()),
                ("NVM_DIR".to_string(), "/opt/nvm".to_string()),
                ("RUSTUP_HOME".to_string(), format!("{home_s}/.rustup")),
            ]),
            "an unset toolchain dir that does not exist and unlisted variables stay out"
        );
    }
}
