//! What every benchmark binary shares: its command line (`--quick`, and `--help` that
//! describes the benchmark instead of running it), the machine's load printed beside
//! the figures, and latency summaries that show a bimodal distribution (a median alone
//! hides a stall that hits one round in three).

use clap::{CommandFactory, FromArgMatches, Parser};

#[derive(Parser, Debug)]
pub struct BenchArgs {
    /// Fewer rounds and runs: a smoke test of the benchmark, not figures to record.
    #[arg(long)]
    pub quick: bool,
}

/// Parses the command line of benchmark `name`, described by `about` (its module doc's
/// first paragraph), and prints the load average before anything is measured.
pub fn args(name: &'static str, about: &'static str) -> BenchArgs {
    let matches = BenchArgs::command().name(name).about(about).get_matches();
    let args = BenchArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    print_load("before");
    args
}

/// `/proc/loadavg`'s 1-, 5- and 15-minute load, as a Markdown-friendly line.
pub fn print_load(when: &str) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<&str> = load.split_whitespace().take(3).collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "load {when}: {} (1/5/15 min) on {cores} cores",
        fields.join(" / ")
    );
}

/// Median, 95th percentile and how many rounds took over twice the median.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub p95: f64,
    pub over_2x_median: usize,
    pub rounds: usize,
}

/// Summarises `samples` (any unit); `None` for no samples.
pub fn summary(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let median = at(0.5);
    Some(Summary {
        median,
        p95: at(0.95),
        over_2x_median: sorted.iter().filter(|&&s| s > 2.0 * median).count(),
        rounds: sorted.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bimodal_latency_shows_in_p95_and_the_slow_count() {
        let mut samples = vec![15.0; 20];
        samples.extend([60.0; 10]);
        let s = summary(&samples).unwrap();
        assert_eq!(
            (s.median, s.p95, s.over_2x_median, s.rounds),
            (15.0, 60.0, 10, 30)
        );
        assert_eq!(summary(&[]), None);
        assert_eq!(summary(&[3.0]).unwrap().p95, 3.0);
    }
}
