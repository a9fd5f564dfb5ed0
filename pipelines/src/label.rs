//! Runner labels: what a stage's `runs_on` asks for and what `slipway runner --labels`
//! offers. A stage goes to a runner that has every label the stage names (like GitLab
//! `tags` or Woodpecker labels). Runners also carry `backend:<name>` for the backend
//! they run stages on, so `runs_on: [backend:docker]` asks for container isolation.

/// Prefix of the label every runner carries for its backend.
pub const BACKEND_LABEL_PREFIX: &str = "backend:";

/// Backends a `backend:<name>` label may name.
pub const BACKENDS: &[&str] = &["local", "docker", "kubernetes"];

/// The backend an image stage runs on when its `runs_on` names none: building an image
/// takes a container engine.
pub const IMAGE_BACKEND: &str = "docker";

/// Longest label accepted.
pub const MAX_LABEL_LEN: usize = 100;

pub const LABEL_HINT: &str =
    "labels use letters, digits and `-`, `_`, `.`, `:`, `/`, `=` (at most 100 characters)";

/// `backend:<name>`.
pub fn backend_label(name: &str) -> String {
    format!("{BACKEND_LABEL_PREFIX}{name}")
}

/// Checks a label's spelling. Kept plain so that labels survive every place they are
/// written: a comma-separated `--labels`, YAML, URLs and log lines.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("a label cannot be empty".into());
    }
    if label.chars().count() > MAX_LABEL_LEN {
        return Err(format!(
            "label `{}…` is longer than {MAX_LABEL_LEN} characters",
            label.chars().take(20).collect::<String>()
        ));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '=')))
    {
        return Err(format!("label `{label}` contains {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in [
            "linux",
            "gpu",
            "backend:docker",
            "arch=arm64",
            "zone/eu-1",
            "a.b_c",
        ] {
            assert_eq!(check_label(ok), Ok(()), "{ok}");
        }
        for bad in ["", "two words", "a,b", "ümlaut", "tab\t", &"x".repeat(101)] {
            assert!(check_label(bad).is_err(), "{bad:?}");
        }
        assert_eq!(backend_label("docker"), "backend:docker");
    }
}
