//! `runner::image_build` against the real Docker engine and the real registry started
//! by `.ci/registry.sh` (htpasswd auth; address from `SLIPWAY_TEST_REGISTRY`, default
//! 127.0.0.1:5000). Images are built `FROM scratch` with the host's static busybox
//! copied into the context, since the engine cannot pull anything. Every test uses
//! its own repository name and removes the images it built.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::query_parameters::RemoveImageOptions;
use runner::image_build::{BuildContext, build_and_push};
use runner::{BuiltImage, Error, ImageSpec, LogChunk, RegistryAuth};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::support::eventually;

const USER: &str = "slipway";
const PASSWORD: &str = "slipway-test";

fn registry() -> String {
    std::env::var("SLIPWAY_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

/// Fails (never skips) with the fix when the registry is not there.
async fn require_registry() -> String {
    let registry = registry();
    let status = reqwest::get(format!("http://{registry}/v2/"))
        .await
        .map(|r| r.status().as_u16());
    assert!(
        matches!(status, Ok(401)),
        "no registry with htpasswd auth on {registry} (got {status:?}): run `bash .ci/registry.sh`"
    );
    registry
}

async fn docker() -> Docker {
    Docker::connect_with_socket_defaults()
        .expect("docker socket")
        .negotiate_version()
        .await
        .expect("the Docker engine at /var/run/docker.sock must be running")
}

fn busybox() -> Vec<u8> {
    std::fs::read("/bin/busybox").expect(
        "/bin/busybox (Debian's busybox-static) is needed: run `bash .ci/registry.sh` \
         or `apt-get install busybox-static`",
    )
}

/// A repository name no other test (or run) uses. (Not under `slipway-test/`: that
/// would contain the password, which is redacted from the log.)
fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("slipway/it-{name}-{}-{nanos}", std::process::id())
}

/// An uncompressed tar of `files` (path, content, mode).
fn context_tar(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(*mode);
        header.set_cksum();
        builder.append_data(&mut header, path, *content).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A base stage with busybox as `/bin/sh` and friends, shared through the build cache
/// by the tests that remove no image.
const BASE: &str = "FROM scratch AS base\n\
                    COPY busybox /bin/busybox\n\
                    RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

/// [`BASE`] with a label that makes every layer after it this test's own, for the
/// tests that remove their image: removing an image prunes its untagged parents,
/// which must not pull a cached layer from under a parallel test's build.
fn own_base() -> String {
    BASE.replacen(
        "\n",
        &format!("\nLABEL org.slipway.test.case={}\n", unique("case")),
        1,
    )
}

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

fn auth(password: &str) -> Option<RegistryAuth> {
    Some(RegistryAuth {
        username: USER.into(),
        password: password.into(),
    })
}

/// Runs a build and returns its result with everything it logged.
async fn run(
    docker: &Docker,
    context: BuildContext,
    spec: &ImageSpec,
) -> (runner::Result<BuiltImage>, String) {
    let (tx, mut rx) = mpsc::unbounded_channel::<LogChunk>();
    let result = build_and_push(docker, context, spec, tx).await;
    let mut log = String::new();
    while let Ok(chunk) = rx.try_recv() {
        log.push_str(&String::from_utf8_lossy(&chunk.bytes));
    }
    (result, log)
}

/// Removes images when the test ends, passed or not.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let images = std::mem::take(&mut self.0);
        if images.is_empty() {
            return;
        }
        // Drop cannot await, and may run inside the test's runtime: use a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let docker = docker().await;
                for image in images {
                    let options = RemoveImageOptions {
                        force: true,
                        ..Default::default()
                    };
                    let _ = docker.remove_image(&image, Some(options), None).await;
                }
            });
        })
        .join();
        // A failure to clean up is already reported by the test's own failure (no
        // engine); panicking again inside Drop would abort the test binary.
    }
}

/// GETs `/v2/<path>` with the test credentials.
async fn registry_get(registry: &str, path: &str, accept: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("http://{registry}/v2/{path}"))
        .basic_auth(USER, Some(PASSWORD))
        .header("Accept", accept)
        .send()
        .await
        .unwrap()
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
                              application/vnd.docker.distribution.manifest.v2+json";

#[tokio::test]
async fn builds_a_target_with_args_and_labels_and_pushes_it_by_digest() {
    let registry = require_registry().await;
    let docker = docker().await;
    let repo = unique("pushed");
    let mut cleanup = Cleanup(vec![]);

    // `broken` comes after the target: the build only succeeds if `target` is honoured.
    let dockerfile = format!(
        "{}\
         FROM base AS app\n\
         ARG GREETING\n\
         RUN test \"$GREETING\" = \"hello from slipway\" && echo \"greeting: $GREETING\" && echo \"$GREETING\" > /greeting\n\
         LABEL greeting=\"$GREETING\"\n\
         FROM base AS broken\n\
         RUN exit 9\n",
        own_base()
    );
    // Named `./…` as in the tars the engine's archive endpoint makes of `<dir>/.`.
    let tar = context_tar(&[
        ("./Dockerfile", dockerfile.as_bytes(), 0o644),
        ("./busybox", &busybox(), 0o755),
    ]);
    let mut spec = spec("Dockerfile", ".");
    spec.target = Some("app".into());
    spec.build_args
        .insert("GREETING".into(), "hello from slipway".into());
    spec.labels
        .insert("org.slipway.commit".into(), "0123abcd".into());
    spec.labels
        .insert("org.slipway.run".into(), "http://ci.example/runs/7".into());
    let reference = format!("{registry}/{repo}:v1");
    spec.push = Some(reference.clone());
    spec.registry_auth = auth(PASSWORD);

    let (result, log) = run(&docker, tar.into(), &spec).await;
    let built = result.unwrap_or_else(|e| panic!("build and push failed: {e}\n{log}"));
    cleanup.0.push(built.id.clone());
    assert!(built.id.starts_with("sha256:"), "{built:?}");
    assert_eq!(built.reference.as_deref(), Some(reference.as_str()));
    let digest = built.digest.clone().expect("a pushed image has a digest");
    assert!(log.contains("greeting: hello from slipway"), "{log}");
    assert!(log.contains(&format!("digest: {digest}")), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");

    // The registry serves exactly the manifest whose digest we recorded.
    let response = registry_get(&registry, &format!("{repo}/manifests/v1"), MANIFEST_TYPES).await;
    assert_eq!(response.status(), 200);
    let header = response
        .headers()
        .get("Docker-Content-Digest")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.bytes().await.unwrap();
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&body))),
        digest
    );
    assert_eq!(header.as_deref(), Some(digest.as_str()));

    // Its config carries the labels, including one made from the build arg.
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config: serde_json::Value = registry_get(
        &registry,
        &format!("{repo}/blobs/{config_digest}"),
        "application/octet-stream",
    )
    .await
    .json()
    .await
    .unwrap();
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.slipway.commit"], "0123abcd", "{config}");
    assert_eq!(labels["org.slipway.run"], "http://ci.example/runs/7");
    assert_eq!(labels["greeting"], "hello from slipway");
    // The config blob is the image: the engine's id is its digest.
    assert_eq!(config_digest, built.id);

    // The local tag was removed after the push.
    assert!(docker.inspect_image(&reference).await.is_err());
}

#[tokio::test]
async fn build_only_keeps_the_image_with_its_labels_and_streams_a_context_with_an_outside_dockerfile()
 {
    let docker = docker().await;
    let mut cleanup = Cleanup(vec![]);
    let dockerfile = format!("{}COPY hello.txt /hello.txt\n", own_base());
    // The context is `app/`; the Dockerfile is `docker/Dockerfile`, outside it.
    let tar = context_tar(&[
        ("hello.txt", b"hello\n", 0o644),
        ("busybox", &busybox(), 0o755),
    ]);
    let mut spec = spec("docker/Dockerfile", "app");
    let marker = unique("label");
    spec.labels
        .insert("org.slipway.test".into(), marker.clone());

    // Streamed in odd-sized chunks, as it would come from the engine's archive endpoint.
    let chunks: Vec<std::io::Result<bytes::Bytes>> = tar
        .chunks(7919)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let context = BuildContext::from_stream(futures::stream::iter(chunks))
        .with_dockerfile(dockerfile.into_bytes());
    let (result, log) = run(&docker, context, &spec).await;
    let built = result.unwrap_or_else(|e| panic!("build failed: {e}\n{log}"));
    cleanup.0.push(built.id.clone());
    assert_eq!((built.reference, built.digest), (None, None));

    let image = docker.inspect_image(&built.id).await.unwrap();
    let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(labels.get("org.slipway.test"), Some(&marker), "{labels:?}");
}

#[tokio::test]
async fn a_dockerfile_outside_the_context_must_be_passed() {
    let docker = docker().await;
    let tar = context_tar(&[("busybox", &busybox(), 0o755)]);
    let (result, _) = run(&docker, tar.into(), &spec("docker/Dockerfile", "app")).await;
    let err = result.unwrap_err();
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("outside context"), "{err}");
}

#[tokio::test]
async fn a_failing_run_names_the_step_and_is_not_retryable() {
    let docker = docker().await;
    let dockerfile = format!("{BASE}RUN echo about to fail && exit 3\n");
    let tar = context_tar(&[
        ("Dockerfile", dockerfile.as_bytes(), 0o644),
        ("busybox", &busybox(), 0o755),
    ]);
    let (result, log) = run(&docker, tar.into(), &spec("Dockerfile", ".")).await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::ImageBuild(_)), "{err:?}");
    assert!(!err.is_retryable());
    let message = err.to_string();
    assert!(
        message.contains("Step 4/4 : RUN echo about to fail && exit 3"),
        "{message}"
    );
    assert!(message.contains("non-zero code: 3"), "{message}");
    assert!(log.contains("about to fail"), "{log}");
}

#[tokio::test]
async fn a_missing_dockerfile_is_a_build_error() {
    let docker = docker().await;
    let tar = context_tar(&[("busybox", &busybox(), 0o755)]);
    let (result, _) = run(&docker, tar.into(), &spec("nope/Dockerfile", ".")).await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::ImageBuild(_)), "{err:?}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().to_lowercase().contains("dockerfile"),
        "{err}"
    );
}

/// A tiny image to push in the push-failure tests. `unique` goes into its only layer,
/// so that no two tests share a cached layer: removing one test's image (which
/// prunes its untagged parents) must not pull a layer from under a parallel build.
fn small_context(unique: &str) -> BuildContext {
    let dockerfile = "FROM scratch\nCOPY hello.txt /hello.txt\n";
    context_tar(&[
        ("Dockerfile", dockerfile.as_bytes(), 0o644),
        ("hello.txt", format!("hello {unique}\n").as_bytes(), 0o644),
    ])
    .into()
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_auth_error_that_never_shows_the_password() {
    let registry = require_registry().await;
    let docker = docker().await;
    let mut cleanup = Cleanup(vec![]);
    let wrong = "wrong-password-7f3a9c";
    let reference = format!("{registry}/{}:v1", unique("denied"));
    let mut spec = spec("Dockerfile", ".");
    spec.push = Some(reference.clone());
    spec.registry_auth = auth(wrong);
    // A label of its own (and content of its own, see `small_context`) makes the image
    // this test's alone, so removing it cannot disturb another test.
    spec.labels
        .insert("org.slipway.test".into(), reference.clone());

    let (result, log) = run(&docker, small_context(&reference), &spec).await;
    let err = result.unwrap_err();
    if let Some(id) = built_id_from_log(&log) {
        cleanup.0.push(id);
    }
    let message = err.to_string();
    assert!(matches!(err, Error::ImagePush { .. }), "{err:?}");
    assert!(!err.is_retryable(), "{message}");
    assert!(
        message.contains("unauthorized") || message.contains("authentication required"),
        "{message}"
    );
    assert!(message.contains(&registry), "{message}");
    assert!(
        !message.contains(wrong) && !log.contains(wrong),
        "{message}\n{log}"
    );
    // The local tag does not outlive the failed push.
    assert!(docker.inspect_image(&reference).await.is_err());
}

#[tokio::test]
async fn an_unreachable_registry_is_retryable() {
    let docker = docker().await;
    let mut cleanup = Cleanup(vec![]);
    // A port nothing listens on: bind, note, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let reference = format!("127.0.0.1:{port}/{}:v1", unique("unreachable"));
    let mut spec = spec("Dockerfile", ".");
    spec.push = Some(reference.clone());
    spec.registry_auth = auth(PASSWORD);
    spec.labels
        .insert("org.slipway.test".into(), reference.clone());

    let (result, log) = run(&docker, small_context(&reference), &spec).await;
    let err = result.unwrap_err();
    if let Some(id) = built_id_from_log(&log) {
        cleanup.0.push(id);
    }
    assert!(matches!(err, Error::ImagePush { .. }), "{err:?}");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("connection refused"), "{err}");
}

/// The classic builder ends with `Successfully built <short id>`.
fn built_id_from_log(log: &str) -> Option<String> {
    log.lines()
        .find_map(|l| l.strip_prefix("Successfully built "))
        .map(|id| id.trim().to_owned())
}

#[tokio::test]
async fn a_context_stream_that_breaks_is_a_retryable_engine_error() {
    let docker = docker().await;
    let tar = context_tar(&[("Dockerfile", b"FROM scratch\n", 0o644)]);
    let chunks: Vec<std::io::Result<bytes::Bytes>> = vec![
        Ok(bytes::Bytes::copy_from_slice(&tar[..512])),
        Err(std::io::Error::other("the workspace volume went away")),
    ];
    let context = BuildContext::from_stream(futures::stream::iter(chunks));
    let (result, _) = run(&docker, context, &spec("Dockerfile", ".")).await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("the workspace volume went away"),
        "{err}"
    );
}

#[tokio::test]
async fn a_push_without_credentials_is_refused_by_the_registry_not_the_engine() {
    let registry = require_registry().await;
    let docker = docker().await;
    let mut cleanup = Cleanup(vec![]);
    let reference = format!("{registry}/{}:v1", unique("anonymous"));
    let mut spec = spec("Dockerfile", ".");
    spec.push = Some(reference.clone());
    spec.labels
        .insert("org.slipway.test".into(), reference.clone());

    let (result, log) = run(&docker, small_context(&reference), &spec).await;
    let err = result.unwrap_err();
    if let Some(id) = built_id_from_log(&log) {
        cleanup.0.push(id);
    }
    let message = err.to_string();
    assert!(matches!(err, Error::ImagePush { .. }), "{err:?}");
    assert!(!err.is_retryable(), "{message}");
    assert!(
        message.contains("no basic auth credentials") || message.contains("unauthorized"),
        "{message}"
    );
}

/// Cancelling a stage drops the build future; the engine must then stop the build and
/// remove its `RUN` container (the classic builder cancels when the client goes away).
#[tokio::test]
async fn dropping_the_build_stops_it_and_leaves_no_container() {
    let docker = docker().await;
    let marker = unique("cancelled");
    let dockerfile = format!("{BASE}RUN echo started && sleep 300\n");
    let tar = context_tar(&[
        ("Dockerfile", dockerfile.as_bytes(), 0o644),
        ("busybox", &busybox(), 0o755),
    ]);
    let mut spec = spec("Dockerfile", ".");
    spec.labels.insert("org.slipway.test".into(), marker);

    let (tx, mut rx) = mpsc::unbounded_channel::<LogChunk>();
    let build = tokio::spawn({
        let docker = docker.clone();
        async move { build_and_push(&docker, tar.into(), &spec, tx).await }
    });
    // The classic builder names the RUN container: `---> Running in <id>`.
    let mut log = String::new();
    let container = loop {
        let chunk = rx
            .recv()
            .await
            .expect("the build ended before its RUN step");
        log.push_str(&String::from_utf8_lossy(&chunk.bytes));
        let running = log
            .lines()
            .find_map(|l| l.trim().strip_prefix("---> Running in "))
            .map(str::to_owned);
        if let (Some(id), true) = (running, log.contains("started")) {
            break id;
        }
    };
    assert!(docker.inspect_container(&container, None).await.is_ok());
    build.abort();
    assert!(build.await.unwrap_err().is_cancelled());

    eventually(
        &format!("build container {container} to go after the build was dropped"),
        async || {
            docker
                .inspect_container(&container, None)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
}
