//! A Kubernetes backend talking to a fresh API-server test double (pods run on
//! the Docker engine, images from `bash .ci/images.sh`), and [`eventually`]: every
//! wait for what the double does in the background, bounded.

#![allow(dead_code)]

pub mod apps;
mod poll;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use runner::conformance::WithGuard;
use runner::{KubernetesBackend, KubernetesOptions};
use tests::kube_double::{self, KubeDouble, KubeDoubleOptions};

pub use poll::{Poll, eventually, poll_until};

pub const IMAGE: &str = "slipway-test/busybox:latest";
pub const NAMESPACE: &str = "builds";

pub fn image() -> String {
    IMAGE.to_owned()
}

/// Options as a test runner uses them: the test image as helper, short grace.
pub fn options(runner: &str) -> KubernetesOptions {
    let mut o = KubernetesOptions::new(runner, NAMESPACE);
    o.helper_image = IMAGE.into();
    o.kill_grace = Duration::from_secs(1);
    o.schedule_timeout = Duration::from_secs(3);
    o.config_error_grace = Duration::from_secs(3);
    o
}

pub fn unique_runner(what: &str) -> String {
    format!("kube-{what}-{}-{:x}", std::process::id(), rand_u32())
}

fn rand_u32() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    n ^ std::process::id().rotate_left(16)
}

pub async fn double() -> KubeDouble {
    kube_double::start(KubeDoubleOptions::default())
        .await
        .expect("starting the kube double (needs Docker and `bash .ci/images.sh`)")
}

/// A backend and the double it talks to, as one `Backend`.
pub async fn backend() -> Arc<WithGuard<KubernetesBackend, KubeDouble>> {
    let d = double().await;
    let backend = KubernetesBackend::new(d.client(), options(&unique_runner("conf"))).unwrap();
    Arc::new(WithGuard { backend, guard: d })
}
