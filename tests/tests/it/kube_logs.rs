//! Step logs over a log stream that ends early (an API server or kubelet restart, an
//! idle load balancer): the Kubernetes backend reads on, and every line arrives once.

use std::time::Duration;

use runner::conformance::{run, stage};
use runner::{KubernetesBackend, LogStreamKind, Status};
use tests::kube_double::{KubeDouble, LogCut};

use crate::kube_support::{self, image, options, unique_runner};

fn log_requests(d: &KubeDouble) -> u64 {
    d.requests()
        .iter()
        .filter(|(route, _)| route.ends_with("/log"))
        .map(|(_, n)| n)
        .sum()
}

/// The length of the padding of line `i` of the script below.
fn padding(i: usize) -> usize {
    [0, 17, 5000, 16_383, 16_384, 20_000, 40_000][i % 7]
}

/// The step writes 70 lines of 0 to 40,000 bytes (runtime log entries are 16 KiB at
/// most, so the long ones are stored in parts), some to stderr, while the double cuts
/// every open log stream a dozen times, cleanly and by resetting the connection: the
/// step's log is still every line exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_stream_cut_mid_step_is_read_on_without_loss_or_repeats() {
    let d = kube_support::double().await;
    let runner = unique_runner("logcut");
    let backend = KubernetesBackend::new(d.client(), options(&runner)).unwrap();
    let script = "i=0; while [ $i -lt 70 ]; do \
        case $((i % 7)) in 0) n=0;; 1) n=17;; 2) n=5000;; 3) n=16383;; 4) n=16384;; 5) n=20000;; 6) n=40000;; esac; \
        pad=$(head -c $n /dev/zero | tr '\\0' x); \
        if [ $((i % 5)) -eq 4 ]; then echo \"line $i $pad\" >&2; else echo \"line $i $pad\"; fi; \
        i=$((i+1)); sleep 0.08; done";
    let spec = stage("logcut", &Some(image()), &[script]);
    let before = log_requests(&d);
    let cuts = async {
        // From when the step's log is first read (setting the pod up takes a while).
        for _ in 0..600 {
            if log_requests(&d) > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for n in 0..12 {
            tokio::time::sleep(Duration::from_millis(350)).await;
            d.cut_log_streams(if n % 2 == 0 {
                LogCut::End
            } else {
                LogCut::Reset
            });
        }
    };
    let (r, ()) = tokio::join!(run(&backend, &spec), cuts);
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    let got = r.text(0, LogStreamKind::Stdout);
    let want: Vec<String> = (0..70)
        .map(|i| format!("line {i} {}", "x".repeat(padding(i))))
        .collect();
    let short = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|l| format!("{} ({} bytes)", &l[..l.len().min(12)], l.len()))
            .collect()
    };
    assert_eq!(short(&got), short(&want));
    assert_eq!(got, want);
    // The streams were really cut and opened again while the step ran.
    let requests = log_requests(&d) - before;
    assert!(requests >= 8, "log requests: {:?}", d.requests());
    d.shutdown().await;
}
