//! Masking across stdout and stderr: a secret written half to one stream and half to
//! the other (`printf %s "${T:0:4}"; printf '%s\n' "${T:4}" >&2`) is in neither
//! stream's lines, yet it is in what a terminal shows. [`StreamPair`] keeps the last
//! bytes written to both streams, in write order, and looks for secrets across the
//! point where the writer switched streams; each part found is marked on its own
//! stream's [`LineAssembler`] before the bytes of the new chunk are pushed, while the
//! other part is still held as that stream's unfinished line (a part of a secret
//! never ends a line: patterns never contain a newline). Lines stay whole, in order,
//! each on its own stream.

use std::ops::Range;

use crate::backend::LogStreamKind;
use crate::log::LineAssembler;
use crate::mask::Masker;

/// Line assembly and masking for a step's two output streams.
#[derive(Debug, Clone)]
pub struct StreamPair {
    masker: Masker,
    stdout: LineAssembler,
    stderr: LineAssembler,
    /// The last `max_pattern_len - 1` bytes written to either stream, in write order.
    tail: Vec<u8>,
    /// For each byte of `tail`: its stream and its offset in that stream.
    tail_from: Vec<(LogStreamKind, u64)>,
}

impl StreamPair {
    pub fn new(masker: &Masker) -> Self {
        StreamPair {
            masker: masker.clone(),
            stdout: masker.lines(),
            stderr: masker.lines(),
            tail: Vec::new(),
            tail_from: Vec::new(),
        }
    }

    fn assembler(&mut self, stream: LogStreamKind) -> &mut LineAssembler {
        match stream {
            LogStreamKind::Stdout => &mut self.stdout,
            LogStreamKind::Stderr => &mut self.stderr,
        }
    }

    /// Feeds bytes written to `stream`; `emit` receives each finished line, masked.
    pub fn push(
        &mut self,
        stream: LogStreamKind,
        bytes: &[u8],
        emit: &mut impl FnMut(LogStreamKind, Vec<u8>),
    ) {
        let hold = self.masker.max_pattern_len().saturating_sub(1);
        if hold > 0 {
            self.mark_across(stream, bytes, hold);
        }
        self.assembler(stream)
            .push(bytes, &mut |line| emit(stream, line));
    }

    /// Emits both streams' unfinished last lines, stdout first.
    pub fn finish(&mut self, emit: &mut impl FnMut(LogStreamKind, Vec<u8>)) {
        self.stdout
            .finish(&mut |line| emit(LogStreamKind::Stdout, line));
        self.stderr
            .finish(&mut |line| emit(LogStreamKind::Stderr, line));
    }

    /// Marks the parts of every secret that starts in the tail and ends in `bytes`
    /// (about to be pushed to `stream`) and spans both streams; then moves the tail.
    fn mark_across(&mut self, stream: LogStreamKind, bytes: &[u8], hold: usize) {
        let base = self.assembler(stream).offset();
        let from = |tail_from: &[(LogStreamKind, u64)], i: usize| match tail_from.get(i) {
            Some(&at) => at,
            None => (stream, base + (i - tail_from.len()) as u64),
        };
        if !self.tail.is_empty() && self.tail_from.iter().any(|(s, _)| *s != stream) {
            // A match starting in the tail is at most `hold + 1` bytes long.
            let head = &bytes[..bytes.len().min(hold + 1)];
            let mut window = self.tail.clone();
            window.extend_from_slice(head);
            for r in self.masker.ranges(&window) {
                if r.start >= self.tail.len() {
                    continue;
                }
                let spans: Vec<(LogStreamKind, u64)> =
                    r.clone().map(|i| from(&self.tail_from, i)).collect();
                if spans.iter().all(|(s, _)| *s == spans[0].0) {
                    // One stream: its own assembler sees the whole secret.
                    continue;
                }
                for (s, range) in runs(&spans) {
                    self.assembler(s).force_mask(range);
                }
            }
        }
        // Move the tail along.
        if bytes.len() >= hold {
            let start = bytes.len() - hold;
            self.tail = bytes[start..].to_vec();
            self.tail_from = (start..bytes.len())
                .map(|i| (stream, base + i as u64))
                .collect();
        } else {
            let drop = (self.tail.len() + bytes.len()).saturating_sub(hold);
            self.tail.drain(..drop);
            self.tail_from.drain(..drop);
            self.tail.extend_from_slice(bytes);
            self.tail_from
                .extend((0..bytes.len()).map(|i| (stream, base + i as u64)));
        }
    }
}

/// Consecutive bytes of one stream with consecutive offsets, as ranges.
fn runs(spans: &[(LogStreamKind, u64)]) -> Vec<(LogStreamKind, Range<u64>)> {
    let mut out: Vec<(LogStreamKind, Range<u64>)> = Vec::new();
    for &(s, off) in spans {
        match out.last_mut() {
            Some((last, r)) if *last == s && r.end == off => r.end += 1,
            _ => out.push((s, off..off + 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use LogStreamKind::{Stderr, Stdout};

    fn run(chunks: &[(LogStreamKind, &str)]) -> Vec<(LogStreamKind, String)> {
        let m = Masker::new(&["hunter22secret".into()]);
        let mut pair = StreamPair::new(&m);
        let mut out = Vec::new();
        let mut emit = |s: LogStreamKind, l: Vec<u8>| out.push((s, String::from_utf8(l).unwrap()));
        for (s, c) in chunks {
            pair.push(*s, c.as_bytes(), &mut emit);
        }
        pair.finish(&mut emit);
        out
    }

    #[test]
    fn a_secret_split_across_streams_is_masked_on_both() {
        let out = run(&[
            (Stdout, "token: hunter"),
            (Stderr, "22secret and more\n"),
            (Stdout, "\n"),
        ]);
        assert_eq!(
            out,
            [
                (Stderr, "******** and more".to_string()),
                (Stdout, "token: ********".to_string())
            ]
        );
    }

    #[test]
    fn three_way_splits_and_unfinished_lines_are_masked() {
        let out = run(&[(Stdout, "a hun"), (Stderr, "ter22"), (Stdout, "secret b")]);
        assert_eq!(
            out,
            [
                (Stdout, "a ******** b".to_string()),
                (Stderr, "********".to_string())
            ]
        );
    }

    #[test]
    fn unrelated_output_is_untouched() {
        let out = run(&[(Stdout, "hunter"), (Stderr, "x\n"), (Stdout, "22secret\n")]);
        // Write order `hunter`, `x\n`, `22secret` holds no secret across streams; the
        // stdout line holds it whole.
        assert_eq!(
            out,
            [(Stderr, "x".to_string()), (Stdout, "********".to_string())]
        );
        let out = run(&[(Stdout, "plain\n"), (Stderr, "text\n")]);
        assert_eq!(
            out,
            [(Stdout, "plain".to_string()), (Stderr, "text".to_string())]
        );
    }
}
