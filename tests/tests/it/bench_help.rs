//! Every benchmark binary answers `--help` with what it measures and its flags, and
//! measures nothing (no server started, nothing printed but the usage): a benchmark run
//! by mistake costs minutes of a shared machine.

use std::process::Command;

const BENCHES: &[(&str, &str)] = &[
    ("bench", env!("CARGO_BIN_EXE_bench")),
    ("bench_artifacts", env!("CARGO_BIN_EXE_bench_artifacts")),
    ("bench_docker", env!("CARGO_BIN_EXE_bench_docker")),
    ("bench_kube", env!("CARGO_BIN_EXE_bench_kube")),
    ("bench_rollout", env!("CARGO_BIN_EXE_bench_rollout")),
    ("bench_server", env!("CARGO_BIN_EXE_bench_server")),
    ("bench_web", env!("CARGO_BIN_EXE_bench_web")),
];

#[test]
fn every_benchmark_answers_help_without_running() {
    for (name, path) in BENCHES {
        let out = Command::new(path).arg("--help").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name} --help: {out:?}");
        assert!(
            stdout.contains(&format!("Usage: {name}")) && stdout.contains("--quick"),
            "{name} --help:\n{stdout}"
        );
        // The usage and nothing else: no load line, no table.
        assert!(
            !stdout.contains("load before") && !stdout.contains("| benchmark |"),
            "{name} --help ran the benchmark:\n{stdout}"
        );
        let bad = Command::new(path).arg("--rounds=3").output().unwrap();
        assert_eq!(
            bad.status.code(),
            Some(2),
            "{name} accepted an unknown flag"
        );
    }
}
