//! Step output into numbered, masked [`LogLine`] events.

use std::time::SystemTime;

use tokio::sync::mpsc::UnboundedSender;

use super::outcome::{LogLine, StageEvent};
use crate::backend::{LogChunk, LogStreamKind};
use crate::interleave::StreamPair;
use crate::mask::Masker;

/// Line assembly for one step: one assembler per stream (so stdout and stderr
/// lines never mix) that also masks secrets split across the two
/// ([`StreamPair`]), one line counter for both.
pub(super) struct StepLines<'a> {
    stage: String,
    step: usize,
    number: u64,
    streams: StreamPair,
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
            streams: StreamPair::new(masker),
            events,
        }
    }

    pub(super) fn push(&mut self, chunk: &LogChunk) {
        let StepLines {
            stage,
            step,
            number,
            streams,
            events,
        } = self;
        streams.push(chunk.stream, &chunk.bytes, &mut |stream, bytes| {
            send(events, stage, *step, number, stream, bytes);
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
        let StepLines {
            stage,
            step,
            number,
            streams,
            events,
        } = self;
        streams.finish(&mut |stream, bytes| {
            send(events, stage, *step, number, stream, bytes);
        });
    }
}

fn send(
    events: &UnboundedSender<StageEvent>,
    stage: &str,
    step: usize,
    number: &mut u64,
    stream: LogStreamKind,
    bytes: Vec<u8>,
) {
    *number += 1;
    let _ = events.send(StageEvent::Line(LogLine {
        stage: stage.to_string(),
        step,
        number: *number,
        stream,
        time: SystemTime::now(),
        bytes,
    }));
}
