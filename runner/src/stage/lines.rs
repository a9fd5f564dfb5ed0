//! Step output into numbered, masked [`LogLine`] events.

use std::time::SystemTime;

use tokio::sync::mpsc::UnboundedSender;

use super::outcome::{LogLine, StageEvent};
use crate::backend::{LogChunk, LogStreamKind};
use crate::log::LineAssembler;
use crate::mask::Masker;

/// Line assembly for one step: one assembler per stream (so stdout and stderr
/// lines never mix), one line counter for both.
pub(super) struct StepLines<'a> {
    stage: String,
    step: usize,
    number: u64,
    stdout: LineAssembler,
    stderr: LineAssembler,
    events: &'a UnboundedSender<StageEvent>,
}

impl<'a> StepLines<'a> {
    pub(super) fn new(
        stage: String,
        step: usize,
        masker: &Masker,
        events: &'a UnboundedSender<StageEvent>,
    ) -> Self {
        StepLines {
            stage,
            step,
            number: 0,
            stdout: masker.lines(),
            stderr: masker.lines(),
            events,
        }
    }

    pub(super) fn push(&mut self, chunk: &LogChunk) {
        let StepLines {
            stage,
            step,
            number,
            stdout,
            stderr,
            events,
        } = self;
        let asm = match chunk.stream {
            LogStreamKind::Stdout => stdout,
            LogStreamKind::Stderr => stderr,
        };
        asm.push(&chunk.bytes, &mut |bytes| {
            *number += 1;
            let _ = events.send(StageEvent::Line(LogLine {
                stage: stage.clone(),
                step: *step,
                number: *number,
                stream: chunk.stream,
                time: SystemTime::now(),
                bytes,
            }));
        });
    }

    /// A whole line of the runner's own (a build result, a finding), masked like
    /// any output.
    pub(super) fn say(&mut self, stream: LogStreamKind, text: &str) {
        self.push(&LogChunk {
            stream,
            bytes: format!("{text}\n").into_bytes().into(),
        });
    }

    pub(super) fn finish(&mut self) {
        for kind in [LogStreamKind::Stdout, LogStreamKind::Stderr] {
            let StepLines {
                stage,
                step,
                number,
                stdout,
                stderr,
                events,
            } = self;
            let asm = match kind {
                LogStreamKind::Stdout => stdout,
                LogStreamKind::Stderr => stderr,
            };
            asm.finish(&mut |bytes| {
                *number += 1;
                let _ = events.send(StageEvent::Line(LogLine {
                    stage: stage.clone(),
                    step: *step,
                    number: *number,
                    stream: kind,
                    time: SystemTime::now(),
                    bytes,
                }));
            });
        }
    }
}
