//! The external tools the tests check Kubernetes objects (and the rest of `deploy/`)
//! with: `deploy_manifests` (the shipped manifests) and `kube_objects` (the pods and
//! Secrets the Kubernetes backend generates) validate alike.
//!
//! A missing tool fails the test, never skips it: `bash .ci/k8s-tools.sh` installs
//! them (kubernetes-validate pinned to the version that script names).

use std::path::Path;
use std::process::{Command, Output};

/// The Kubernetes version objects are validated against: the oldest Slipway
/// supports, and the first with native sidecars (`restartPolicy: Always` on init
/// containers, from 1.28) long stable.
pub const KUBERNETES_VERSION: &str = "1.30.0";

/// The newest schema the pinned kubernetes-validate ships: a field removed or renamed
/// in a later release than [`KUBERNETES_VERSION`] would show here.
pub const NEWEST_KUBERNETES: &str = "1.37.0";

pub const INSTALL_HINT: &str = "run `bash .ci/k8s-tools.sh` (installs kubectl, \
                                kubernetes-validate, docker-compose and systemd-analyze)";

/// Runs a tool; a tool that is not installed fails the test with the install hint.
pub fn run(cmd: &mut Command) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` is not installed: {INSTALL_HINT}")
        }
        Err(e) => panic!("running `{program}`: {e}"),
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `kubernetes-validate --strict` (unknown fields fail) against Kubernetes `version`
/// over `file`, a YAML stream of `objects` objects. One call for all of them, so the
/// schemas load once. `Err` holds the tool's output: some object failed, or fewer
/// than `objects` were validated (an unknown kind is skipped, not failed, by the tool).
pub fn kubernetes_validate_strict(
    file: &Path,
    version: &str,
    objects: usize,
) -> Result<(), String> {
    let out = run(Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k"])
        .arg(version)
        .arg(file));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    if stderr.contains("No module named kubernetes_validate") {
        panic!("kubernetes-validate is not installed for python3: {INSTALL_HINT}");
    }
    if !out.status.success() {
        return Err(format!(
            "{} does not validate against Kubernetes {version}:\n{stdout}{stderr}",
            file.display()
        ));
    }
    let passed = stdout.matches(" passed for resource ").count();
    if passed != objects {
        return Err(format!(
            "{}: {objects} objects, {passed} validated against Kubernetes {version}:\n{stdout}{stderr}",
            file.display()
        ));
    }
    Ok(())
}
