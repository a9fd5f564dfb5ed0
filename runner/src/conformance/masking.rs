//! Case: no secret, in any form or split, reaches a log line.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

use super::harness::{env, run, stage};
use crate::{Backend, LogLine, LogStreamKind, Status};

/// No secret — raw, base64 (standard, URL-safe, padded or not, embedded at any
/// alignment, wrapped), split across writes, across a forced line split, or line
/// by line for a multi-line secret — appears in any event.
pub async fn masking(backend: Arc<dyn Backend>, image: Option<String>) {
    let s1 = "s3cr3t-Value-XYZ";
    // Its base64 contains `+` and `/`, so the URL-safe form differs.
    let s2 = "??>>??~~pa55w0rd";
    let s3 =
        "-----BEGIN TEST KEY-----\nAAAAsecretline1\nBBBBsecretline2\n}\n-----END TEST KEY-----";
    let script = r#"
echo "raw: $S1"
echo "again:$S1:and:$S2"
echo "err: $S1" >&2
printf '%s' "$S1" | base64
printf '%s' "$S2" | base64
printf '%s' "$S2" | base64 | tr '+/' '-_'
printf '%s' "$S2" | base64 | tr '+/' '-_' | tr -d '='
printf 'x%s' "$S1" | base64
printf 'xy%s' "$S1" | base64
printf '%s' "$S3" | base64
printf '%s' "$S3" | base64 | tr -d '\n'; echo
printf '%s\n' "$S3"
printf '%s' "${S1%%-*}"; sleep 1; printf -- '-%s\n' "${S1#*-}"
head -c 65530 /dev/zero | tr '\0' a; printf '%s\n' "$S1"
echo "brace: { }"
"#;
    let mut spec = stage("masking", &image, &[script]);
    spec.env = env(&[("S1", s1), ("S2", s2), ("S3", s3)]);
    spec.secrets = vec![s1.into(), s2.into(), s3.into()];
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);

    let mut forbidden: Vec<String> = Vec::new();
    for secret in [s1, s2, s3] {
        forbidden.extend(
            secret
                .lines()
                .filter(|l| l.trim().len() >= 4)
                .map(str::to_owned),
        );
        for enc in [
            STANDARD.encode(secret),
            STANDARD_NO_PAD.encode(secret),
            URL_SAFE.encode(secret),
            URL_SAFE_NO_PAD.encode(secret),
        ] {
            // Any 16-character window of an encoding: catches partial leaks too.
            let chars: Vec<char> = enc.chars().collect();
            for w in chars.windows(16) {
                forbidden.push(w.iter().collect());
            }
        }
    }
    // The middle of the encodings of `x<S1>` and `xy<S1>` (the ends depend on the
    // neighbouring bytes).
    for prefix in ["x", "xy"] {
        let enc = STANDARD.encode(format!("{prefix}{s1}"));
        forbidden.push(enc[4..enc.len() - 4].to_owned());
    }

    let lines: Vec<&LogLine> = r.lines(0);
    let mut masked = 0;
    for line in &lines {
        let text = String::from_utf8_lossy(&line.bytes);
        for f in &forbidden {
            assert!(
                !text.contains(f.as_str()),
                "secret material {f:?} leaked in line {}: {text:?}",
                line.number
            );
        }
        if text.contains("********") {
            masked += 1;
        }
    }
    let out = r.stdout(0);
    assert!(out.iter().any(|l| l == "raw: ********"), "{out:?}");
    assert!(out.iter().any(|l| l == "********"), "split write: {out:?}");
    assert!(
        out.iter().any(|l| l == "brace: { }"),
        "over-masking: {out:?}"
    );
    if backend.separates_streams() {
        assert_eq!(r.text(0, LogStreamKind::Stderr), vec!["err: ********"]);
    } else {
        assert!(r.text(0, LogStreamKind::Stderr).is_empty());
        assert!(out.iter().any(|l| l == "err: ********"), "{out:?}");
    }
    assert!(
        masked >= 12,
        "expected many masked lines, got {masked}: {out:?}"
    );
}
