//! Builds a container image through the Docker engine and pushes it to a registry:
//! the work behind `kind: image` stages ([`crate::Backend::build_image`]).
//!
//! The engine does the building (its classic builder: API 1.41 engines need a gRPC
//! session for BuildKit, and the classic builder is what every engine has), so the
//! runner only ships it a tar of the build context. Build and push output is streamed
//! to the stage log as it arrives. The result is the engine's image id and, when
//! pushed, the registry's manifest digest, which is what later stages deploy by: tags
//! move, digests do not.
//!
//! Where the Dockerfile is: [`ImageSpec::dockerfile`] and [`ImageSpec::context`] are
//! both relative to the workspace, but the engine reads the Dockerfile from the
//! context tar. [`locate_dockerfile`] says which case applies: inside the context the
//! engine is given its path within the context; outside it (`docker/Dockerfile` with
//! context `app`, as `docker build -f` allows) the caller reads the file from the
//! workspace and passes its bytes with [`BuildContext::with_dockerfile`], and it is
//! added to the tar under a name of its own, as the Docker CLI does.
//!
//! The context tar is sent as given: the engine's classic builder does not apply
//! `.dockerignore` to it (the Docker CLI filters on the client side), so a caller that
//! wants that must leave the excluded files out of the tar.
//!
//! Cancelling: drop the future. The engine stops the build when the connection
//! closes and removes the `RUN` container (tested); a push in flight stops the same
//! way, possibly leaving the local tag behind.
//!
//! Errors: a failing instruction or an unusable Dockerfile is [`Error::ImageBuild`]
//! (not retryable) naming the failing step; a registry that cannot be reached is a
//! retryable [`Error::ImagePush`], one that refuses the credentials or the image a
//! non-retryable one; an unreachable engine is a retryable [`Error::Backend`].
//! Registry passwords never appear in logs or errors.

use std::collections::HashMap;
use std::io;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as EngineError;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, BuilderVersion, PushImageOptions, RemoveImageOptions, TagImageOptions,
};
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc::UnboundedSender;

use crate::backend::{BuiltImage, LogChunk, LogStreamKind};
use crate::error::{Error, Result};
use crate::spec::ImageSpec;

/// What the engine builds from: the context tar, in memory or streamed (e.g. straight
/// from the engine's archive endpoint of a workspace volume, without buffering it).
pub struct BuildContext {
    tar: ContextTar,
    /// The Dockerfile's content when it lies outside the context.
    outside_dockerfile: Option<Bytes>,
}

enum ContextTar {
    Bytes(Bytes),
    Stream(BoxStream<'static, io::Result<Bytes>>),
}

impl BuildContext {
    /// `tar`: an uncompressed tar of the context directory, entry names relative to it
    /// (`Dockerfile`, `./src/main.rs`).
    pub fn new(tar: impl Into<Bytes>) -> Self {
        BuildContext {
            tar: ContextTar::Bytes(tar.into()),
            outside_dockerfile: None,
        }
    }

    /// The same tar as a stream of chunks; an `Err` item aborts the build (retryable).
    pub fn from_stream(tar: impl Stream<Item = io::Result<Bytes>> + Send + 'static) -> Self {
        BuildContext {
            tar: ContextTar::Stream(tar.boxed()),
            outside_dockerfile: None,
        }
    }

    /// The Dockerfile's content, required when [`locate_dockerfile`] says
    /// [`DockerfileLocation::OutsideContext`] (ignored otherwise).
    pub fn with_dockerfile(mut self, dockerfile: impl Into<Bytes>) -> Self {
        self.outside_dockerfile = Some(dockerfile.into());
        self
    }
}

impl From<Vec<u8>> for BuildContext {
    fn from(tar: Vec<u8>) -> Self {
        BuildContext::new(tar)
    }
}

impl From<Bytes> for BuildContext {
    fn from(tar: Bytes) -> Self {
        BuildContext::new(tar)
    }
}

/// Where the Dockerfile is relative to the build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerfileLocation {
    /// Inside the context, at this `/`-separated path relative to it: the context tar
    /// already holds it.
    InContext(String),
    /// Outside the context: the caller must read `spec.dockerfile` from the workspace
    /// and pass it with [`BuildContext::with_dockerfile`].
    OutsideContext,
}

/// Says where `spec.dockerfile` is relative to `spec.context`, refusing paths that are
/// absolute or climb out of the workspace (a pipeline-author mistake, not retryable).
pub fn locate_dockerfile(spec: &ImageSpec) -> Result<DockerfileLocation> {
    let context = workspace_path(&spec.context, "context")?;
    let dockerfile = workspace_path(&spec.dockerfile, "dockerfile")?;
    if dockerfile.is_empty() {
        return Err(Error::InvalidSpec(format!(
            "image dockerfile `{}` names the workspace, not a file",
            spec.dockerfile
        )));
    }
    match dockerfile.strip_prefix(context.as_slice()) {
        Some([]) => Err(Error::InvalidSpec(format!(
            "image dockerfile `{}` names the context directory, not a file",
            spec.dockerfile
        ))),
        Some(rest) => Ok(DockerfileLocation::InContext(rest.join("/"))),
        None => Ok(DockerfileLocation::OutsideContext),
    }
}

/// The components of a workspace-relative path with `.` and `..` resolved; refuses
/// absolute paths and paths escaping the workspace.
fn workspace_path<'a>(path: &'a str, what: &str) -> Result<Vec<&'a str>> {
    let bad = |why: &str| Error::InvalidSpec(format!("image {what} `{path}`: {why}"));
    if path.starts_with('/') {
        return Err(bad("must be relative to the workspace"));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or_else(|| bad("escapes the workspace"))?;
            }
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

/// A push reference split the way the engine's push API wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    /// `registry/team/app` (everything before the tag).
    pub(crate) repository: String,
    pub(crate) tag: String,
    /// The registry host credentials are for (`docker.io` when none is named).
    pub(crate) registry: String,
}

impl Reference {
    pub(crate) fn parse(reference: &str) -> Result<Reference> {
        let bad = |why: &str| Error::InvalidSpec(format!("image push `{reference}`: {why}"));
        if reference.is_empty() {
            return Err(bad("is empty"));
        }
        if reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("contains whitespace"));
        }
        if reference.contains('@') {
            return Err(bad(
                "must be a tag (`registry/app:tag`), not a digest: the digest is the result",
            ));
        }
        // A `:` after the last `/` starts the tag; one before it is a registry port.
        let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match reference[last_slash..].rfind(':') {
            Some(i) => (
                &reference[..last_slash + i],
                &reference[last_slash + i + 1..],
            ),
            None => (reference, "latest"),
        };
        if repository.is_empty() || repository.ends_with('/') || tag.is_empty() {
            return Err(bad("expected `[registry/]name[:tag]`"));
        }
        // Docker's rule: the first component is a registry host when it looks like one.
        let (registry, path) = match repository.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first, rest)
            }
            _ => ("docker.io", repository),
        };
        // Checked before building, so a typo fails in a second, not after the build.
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if !path.split('/').all(component_ok) {
            return Err(bad(
                "the repository name may only use lower-case letters, digits and `._-` \
                 between `/`, each part starting and ending with a letter or digit",
            ));
        }
        let tag_ok = tag.len() <= 128
            && tag.as_bytes()[0] != b'.'
            && tag.as_bytes()[0] != b'-'
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !tag_ok {
            return Err(bad(
                "the tag may only use letters, digits and `_.-` (not first: `.-`), at most 128",
            ));
        }
        Ok(Reference {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            registry: registry.to_owned(),
        })
    }

    pub(crate) fn full(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    /// The `serveraddress` the engine matches credentials against.
    pub(crate) fn server_address(&self) -> String {
        if self.registry == "docker.io" {
            "https://index.docker.io/v1/".to_owned()
        } else {
            self.registry.clone()
        }
    }
}

/// Builds `spec` from `context` through the engine and, when `spec.push` is set, tags
/// and pushes it with `spec.registry_auth`, returning the image id and the pushed
/// manifest digest. Output lines (build steps, `RUN` output, push progress) go to
/// `log` as they arrive; a dropped receiver is ignored.
///
/// After a successful push the local tag is removed (and with it the image, unless
/// something else references it), so a runner host does not collect one image per
/// build; the digest lives in the registry. A build-only image (no `push`) is kept,
/// untagged, under its id.
///
/// The engine's API version is negotiated on `docker` first (it is shared by clones),
/// so a client made with bollard's defaults works with older engines.
pub async fn build_and_push(
    docker: &Docker,
    context: BuildContext,
    spec: &ImageSpec,
    log: UnboundedSender<LogChunk>,
) -> Result<BuiltImage> {
    let reference = spec.push.as_deref().map(Reference::parse).transpose()?;
    let location = locate_dockerfile(spec)?;
    let out = Output {
        log,
        password: spec
            .registry_auth
            .as_ref()
            .map(|a| a.password.clone())
            .filter(|p| !p.is_empty()),
    };
    docker
        .clone()
        .negotiate_version()
        .await
        .map_err(|e| engine_error("negotiate API version", e))?;

    let (dockerfile, first) = match location {
        DockerfileLocation::InContext(path) => (path, None),
        DockerfileLocation::OutsideContext => {
            let content = context.outside_dockerfile.ok_or_else(|| {
                Error::InvalidState(format!(
                    "dockerfile `{}` is outside context `{}`: its content must be passed \
                     with BuildContext::with_dockerfile",
                    spec.dockerfile, spec.context
                ))
            })?;
            let (name, entry) = dockerfile_entry(&content);
            (name, Some(entry))
        }
    };

    let id = build(
        docker,
        &dockerfile,
        context.tar,
        first,
        spec,
        reference.as_ref(),
        &out,
    )
    .await?;
    let Some(reference) = reference else {
        return Ok(BuiltImage {
            id,
            reference: None,
            digest: None,
        });
    };
    let pushed = push(docker, &id, &reference, spec, &out).await;
    // Whether or not the push worked, the tag has done its job.
    untag(docker, &id, &reference).await;
    let digest = pushed?;
    Ok(BuiltImage {
        id,
        reference: Some(reference.full()),
        digest: Some(digest),
    })
}

/// Where build and push output goes, with the registry password (if any) redacted
/// from everything that leaves this module.
struct Output {
    log: UnboundedSender<LogChunk>,
    password: Option<String>,
}

impl Output {
    fn redact(&self, text: &str) -> String {
        match &self.password {
            Some(p) => text.replace(p.as_str(), "***"),
            None => text.to_owned(),
        }
    }

    /// Output as the engine sent it (build output may split a line across messages;
    /// [`crate::run_stage`] assembles lines).
    fn send_raw(&self, stream: LogStreamKind, text: &str) {
        let _ = self.log.send(LogChunk {
            stream,
            bytes: Bytes::from(self.redact(text)),
        });
    }

    /// One whole line (a status message).
    fn send(&self, stream: LogStreamKind, text: &str) {
        let mut line = self.redact(text);
        if !line.ends_with('\n') {
            line.push('\n');
        }
        // The receiver may be gone (stage cancelled); the build result still matters.
        let _ = self.log.send(LogChunk {
            stream,
            bytes: Bytes::from(line),
        });
    }
}

/// Runs the engine's build and returns the image id.
async fn build(
    docker: &Docker,
    dockerfile: &str,
    tar: ContextTar,
    // A tar entry to put before the context's entries (a Dockerfile from outside).
    first: Option<Bytes>,
    spec: &ImageSpec,
    reference: Option<&Reference>,
    out: &Output,
) -> Result<String> {
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(dockerfile)
        // Remove intermediate containers, also after a failed step.
        .rm(true)
        .forcerm(true)
        .version(BuilderVersion::BuilderV1);
    if let Some(target) = &spec.target {
        options = options.target(target);
    }
    if !spec.build_args.is_empty() {
        options = options.buildargs(&spec.build_args.iter().collect::<HashMap<_, _>>());
    }
    if !spec.labels.is_empty() {
        options = options.labels(&spec.labels.iter().collect::<HashMap<_, _>>());
    }
    // The same credentials let `FROM` pull private base images from the push registry.
    let credentials = reference
        .and_then(|r| credentials(r, spec).map(|c| HashMap::from([(r.server_address(), c)])));

    // bollard's body type is private, hence the match in place.
    let body = match (tar, first) {
        (ContextTar::Bytes(tar), None) => bollard::body_full(tar),
        (ContextTar::Bytes(tar), Some(first)) => {
            let mut body = BytesMut::with_capacity(first.len() + tar.len());
            body.extend_from_slice(&first);
            body.extend_from_slice(&tar);
            bollard::body_full(body.freeze())
        }
        (ContextTar::Stream(tar), None) => bollard::body_try_stream(tar),
        (ContextTar::Stream(tar), Some(first)) => {
            bollard::body_try_stream(stream::once(async { Ok(first) }).chain(tar))
        }
    };
    let mut stream = docker.build_image(options.build(), credentials, Some(body));
    let mut id = None;
    // The last `Step n/m : INSTRUCTION` line, to say which instruction failed.
    let mut step: Option<String> = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(text) = info.stream.as_deref().filter(|t| !t.is_empty()) {
                    for line in text.lines() {
                        if line.starts_with("Step ") && line.contains(" : ") {
                            step = Some(line.trim().to_owned());
                        }
                    }
                    out.send_raw(LogStreamKind::Stdout, text);
                }
                if let Some(status) = info.status.as_deref().filter(|s| !s.is_empty()) {
                    out.send(LogStreamKind::Stdout, status);
                }
                if let Some(image) = info.aux.and_then(|aux| aux.id) {
                    id = Some(image);
                }
            }
            Err(EngineError::DockerStreamError { error }) => {
                out.send(LogStreamKind::Stderr, &error);
                return Err(build_failure(step.as_deref(), &error, out));
            }
            // The engine refused the request itself (bad Dockerfile path, bad option):
            // the same request fails again.
            Err(EngineError::DockerResponseServerError {
                status_code,
                message,
            }) if status_code < 500 || is_build_input_error(&message) => {
                out.send(LogStreamKind::Stderr, &message);
                return Err(build_failure(step.as_deref(), &message, out));
            }
            Err(e) => return Err(engine_error("build image", e)),
        }
    }
    id.ok_or_else(|| Error::Backend {
        op: "build image",
        message: "the engine finished the build without reporting an image id".into(),
    })
}

/// Engine messages (HTTP 500 on older engines) that mean the build's inputs are
/// unusable rather than the engine broken.
fn is_build_input_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "dockerfile",
        "unknown instruction",
        "failed to reach build target",
        "parse error",
        "no build stage",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

fn build_failure(step: Option<&str>, message: &str, out: &Output) -> Error {
    let message = out.redact(message.trim());
    Error::ImageBuild(match step {
        Some(step) => format!("{step}: {message}"),
        None => message,
    })
}

fn credentials(reference: &Reference, spec: &ImageSpec) -> Option<DockerCredentials> {
    spec.registry_auth.as_ref().map(|auth| DockerCredentials {
        username: Some(auth.username.clone()),
        password: Some(auth.password.clone()),
        serveraddress: Some(reference.server_address()),
        ..Default::default()
    })
}

/// Tags image `id` as `reference`, pushes it, and returns the manifest digest the
/// engine reports (`<tag>: digest: sha256:… size: …`).
async fn push(
    docker: &Docker,
    id: &str,
    reference: &Reference,
    spec: &ImageSpec,
    out: &Output,
) -> Result<String> {
    // Tagged only now, right before the push, so that two builds of the same reference
    // on one host have the smallest window to swap tags; the repo-digest check below
    // catches the rest.
    docker
        .tag_image(
            id,
            Some(TagImageOptions {
                repo: Some(reference.repository.clone()),
                tag: Some(reference.tag.clone()),
            }),
        )
        .await
        .map_err(|e| match e {
            // The engine's reference grammar is the authority on what a name may be.
            EngineError::DockerResponseServerError {
                status_code: 400..=499,
                message,
            } => Error::InvalidSpec(format!("image push `{}`: {message}", reference.full())),
            e => engine_error("tag image", e),
        })?;
    out.send(
        LogStreamKind::Stdout,
        &format!("Pushing {}", reference.full()),
    );

    let failed = |message: &str, retryable: bool| Error::ImagePush {
        registry: reference.registry.clone(),
        message: out.redact(message.trim()),
        retryable,
    };
    let mut stream = docker.push_image(
        &reference.repository,
        Some(PushImageOptions {
            tag: Some(reference.tag.clone()),
            ..Default::default()
        }),
        credentials(reference, spec),
    );
    let mut digest = None;
    let mut last_status = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                let Some(status) = info.status else { continue };
                if let Some(d) = digest_in_status(&status) {
                    digest = Some(d.to_owned());
                }
                // Per-layer byte progress repeats the same status many times; one line
                // per change is enough for a CI log.
                if status != last_status {
                    out.send(LogStreamKind::Stdout, &status);
                    last_status = status;
                }
            }
            Err(EngineError::DockerStreamError { error }) => {
                out.send(LogStreamKind::Stderr, &error);
                return Err(failed(&error, push_error_is_retryable(&error)));
            }
            Err(EngineError::DockerResponseServerError { message, .. }) => {
                out.send(LogStreamKind::Stderr, &message);
                return Err(failed(&message, push_error_is_retryable(&message)));
            }
            Err(e) => return Err(engine_error("push image", e)),
        }
    }
    let digest = digest.ok_or_else(|| {
        failed(
            "the engine finished the push without reporting a manifest digest",
            true,
        )
    })?;

    // The engine records the pushed manifest's digest on the image it pushed; if it is
    // not on ours, another build moved the tag between our tag and push.
    let inspect = docker
        .inspect_image(id)
        .await
        .map_err(|e| engine_error("inspect image", e))?;
    let ours = inspect
        .repo_digests
        .unwrap_or_default()
        .iter()
        .any(|rd| rd.ends_with(&format!("@{digest}")));
    if !ours {
        return Err(failed(
            &format!(
                "the pushed manifest {digest} is not image {id}: another build retagged {} \
                 during the push",
                reference.full()
            ),
            true,
        ));
    }
    Ok(digest)
}

/// `latest: digest: sha256:<64 hex> size: 528` → `sha256:<64 hex>`.
fn digest_in_status(status: &str) -> Option<&str> {
    let start = status.find("digest: sha256:")? + "digest: ".len();
    let candidate = status[start..].split_whitespace().next()?;
    let hex = candidate.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(candidate)
}

/// Refusals (credentials, permissions, a bad name or manifest) fail again on retry;
/// everything else (connection refused, DNS, timeouts, 5xx) may not.
pub(crate) fn push_error_is_retryable(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ![
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "incorrect username or password",
        "denied",
        "forbidden",
        "invalid reference format",
        "repository name must",
        "name invalid",
        "name_invalid",
        "tag invalid",
        "manifest invalid",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// Removes the local tag after a push, if it still names our image (another build may
/// have taken it). Best effort: the push already succeeded.
async fn untag(docker: &Docker, id: &str, reference: &Reference) {
    let full = reference.full();
    match docker.inspect_image(&full).await {
        Ok(image) if image.id.as_deref() == Some(id) => {
            let options = RemoveImageOptions {
                force: false,
                noprune: false,
                ..Default::default()
            };
            if let Err(e) = docker.remove_image(&full, Some(options), None).await {
                tracing::warn!(reference = %full, error = %e, "could not remove the local tag after the push");
            }
        }
        _ => {}
    }
}

/// A tar entry holding `dockerfile` under a name of its own (the Docker CLI does the
/// same for `-f` outside the context), to put before the context's entries: a tar is
/// a sequence of entries, so prepending one needs no rewriting of the rest. Returns
/// the name and the entry (header, content, padding to 512 bytes).
fn dockerfile_entry(dockerfile: &[u8]) -> (String, Bytes) {
    let hash = hex::encode(Sha256::digest(dockerfile));
    let name = format!(".slipway-dockerfile-{}", &hash[..16]);
    let mut header = tar::Header::new_ustar();
    header
        .set_path(&name)
        .expect("a short ASCII name fits a ustar header");
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let padding = (512 - dockerfile.len() % 512) % 512;
    let mut out = BytesMut::with_capacity(512 + dockerfile.len() + padding);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(dockerfile);
    out.extend_from_slice(&[0; 512][..padding]);
    (name, out.freeze())
}

/// Engine trouble that is not about the build's inputs: retryable.
fn engine_error(op: &'static str, e: EngineError) -> Error {
    // bollard's transport errors say little at the top ("client error (SendRequest)");
    // the cause chain says what broke.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    Error::Backend { op, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(dockerfile: &str, context: &str) -> ImageSpec {
        ImageSpec {
            dockerfile: dockerfile.into(),
            context: context.into(),
            target: None,
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            push: None,
            registry_auth: None,
        }
    }

    #[test]
    fn dockerfile_inside_or_outside_the_context() {
        use DockerfileLocation::*;
        let at = |d, c| locate_dockerfile(&spec(d, c)).unwrap();
        assert_eq!(at("Dockerfile", "."), InContext("Dockerfile".into()));
        assert_eq!(at("Dockerfile", ""), InContext("Dockerfile".into()));
        assert_eq!(
            at("./app/Dockerfile", "app"),
            InContext("Dockerfile".into())
        );
        assert_eq!(
            at("app/docker/../build/Dockerfile", "app/"),
            InContext("build/Dockerfile".into())
        );
        assert_eq!(at("docker/Dockerfile", "app"), OutsideContext);
        // `application` is not inside `app`: components, not string prefixes.
        assert_eq!(at("application/Dockerfile", "app"), OutsideContext);
    }

    #[test]
    fn dockerfile_paths_that_are_refused() {
        for (d, c) in [
            ("/etc/Dockerfile", "."),
            ("Dockerfile", "/"),
            ("../Dockerfile", "."),
            ("Dockerfile", "a/../../b"),
            ("app", "app"),
            (".", "."),
        ] {
            let err = locate_dockerfile(&spec(d, c)).unwrap_err();
            assert!(matches!(err, Error::InvalidSpec(_)), "{d} {c}: {err}");
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn references() {
        let r = Reference::parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(
            (r.repository.as_str(), r.tag.as_str(), r.registry.as_str()),
            ("127.0.0.1:5000/team/app", "v1", "127.0.0.1:5000")
        );
        let r = Reference::parse("127.0.0.1:5000/app").unwrap();
        assert_eq!(
            (r.tag.as_str(), r.registry.as_str()),
            ("latest", "127.0.0.1:5000")
        );
        let r = Reference::parse("team/app:1.0").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.server_address(), "https://index.docker.io/v1/");
        let r = Reference::parse("localhost/app").unwrap();
        assert_eq!(r.registry, "localhost");
        for bad in [
            "",
            "reg/app@sha256:abc",
            "reg/app:",
            "reg/",
            "a b",
            ":tag",
            "127.0.0.1:5000/MyApp:v1",
            "reg.io/team//app",
            "reg.io/-app",
            "reg.io/app:-v1",
            "reg.io/app:v/1",
        ] {
            let err = Reference::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidSpec(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn digest_from_push_status() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_in_status(&format!("v1: digest: sha256:{hex} size: 528")),
            Some(format!("sha256:{hex}").as_str())
        );
        assert_eq!(digest_in_status("Pushed"), None);
        assert_eq!(digest_in_status("v1: digest: sha256:abc size: 1"), None);
    }

    #[test]
    fn push_error_classification() {
        assert!(!push_error_is_retryable(
            "unauthorized: authentication required"
        ));
        assert!(!push_error_is_retryable(
            "denied: requested access to the resource is denied"
        ));
        assert!(push_error_is_retryable(
            "Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused"
        ));
        assert!(push_error_is_retryable(
            "received unexpected HTTP status: 503 Service Unavailable"
        ));
    }

    #[test]
    fn extra_dockerfile_is_a_valid_first_entry() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "hello.txt", &b"hi"[..])
            .unwrap();
        let tar = builder.into_inner().unwrap();

        let (name, entry) = dockerfile_entry(b"FROM scratch\n");
        let combined = [&entry[..], &tar[..]].concat();
        assert!(name.starts_with(".slipway-dockerfile-"));
        let mut archive = tar::Archive::new(&combined[..]);
        let entries: Vec<(String, Vec<u8>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let mut body = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut body).unwrap();
                (path, body)
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                (name, b"FROM scratch\n".to_vec()),
                ("hello.txt".into(), b"hi".to_vec())
            ]
        );
    }
}
