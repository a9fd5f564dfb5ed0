//! Limits on pipeline files, applied by [`crate::parse`] and so by everything that reads
//! them — `slipway validate`, `slipway exec` and the server's planner alike: a file that
//! validates on a laptop is never refused by the server for its size or its length.
//!
//! Why limits at all: the YAML and the plan derived from it are stored with every run,
//! and each planned stage is a row, a queue entry and a runner lease. A multi-megabyte
//! file or thousands of stages is almost certainly a mistake (or an attempt to bloat the
//! database), and becomes a clear error instead.

use crate::model::Stage;

/// Largest pipeline file, in bytes. The server also refuses to read a larger file out
/// of a commit at all (`git::pipeline`), with the same limit.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// Most stages one pipeline may plan, each matrix combination counted as a stage
/// (a matrix alone is limited to [`crate::MATRIX_LIMIT`]).
pub const MAX_STAGES: usize = 500;

/// How many stages `stages` plan at most: one per stage, or one per matrix combination.
pub fn planned_stage_count(stages: &[Stage]) -> usize {
    stages
        .iter()
        .map(|s| s.matrix.as_ref().map_or(1, Vec::len))
        .sum()
}
