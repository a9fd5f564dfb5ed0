//! Step output into numbered, masked [`LogLine`] events.

use std::collections::VecDeque;
use std::time::SystemTime;

use super::events::{EventSender, line_cost};
use super::outcome::{LogLine, StageEvent};
use crate::backend::{LogChunk, LogStreamKind};
use crate::interleave::StreamPair;
use crate::mask::Masker;

/// Line assembly for one step: one assembler per stream (so stdout and stderr
/// lines never mix) that also masks secrets split across the two
/// ([`StreamPair`]), one line counter for both.
///
/// Assembling ([`StepLines::push`]) and sending ([`StepLines::send_pending`]) are
/// apart: the lines of one chunk wait here until the event channel has room for
/// them, and the caller reads no further output meanwhile — that is the back-pressure
/// on the step — while it keeps watching the deadline and the cancel token.
pub(super) struct StepLines<'a> {
    stage: String,
    step: usize,
    number: u64,
    streams: StreamPair,
    events: &'a EventSender,
    /// Assembled lines not sent yet, oldest first.
    pending: VecDeque<LogLine>,
    /// The rest of the log was given up on: nothing more is sent.
    abandoned: bool,
}

impl<'a> StepLines<'a> {
    pub(super) fn new(
        stage: String,
        step: usize,
        masker: &Masker,
        events: &'a EventSender,
    ) -> Self {
        StepLines {
            stage,
            step,
            number: 0,
            streams: StreamPair::new(masker),
            events,
            pending: VecDeque::new(),
            abandoned: false,
        }
    }

    /// Assembles `chunk` into lines, which wait for [`StepLines::send_pending`].
    pub(super) fn push(&mut self, chunk: &LogChunk) {
        let StepLines {
            stage,
            step,
            number,
            streams,
            pending,
            ..
        } = self;
        streams.push(chunk.stream, &chunk.bytes, &mut |stream, bytes| {
            pending.push_back(line(stage, *step, number, stream, bytes));
        });
    }

    /// Whether assembled lines wait to be sent.
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Sends the assembled lines, in order, once the channel has room for them: in
    /// groups of up to a quarter of the budget (at least one line), each one wait and
    /// one send. Cancel-safe: dropped while waiting, the lines not sent stay pending.
    /// Once the receiver is gone the lines are dropped.
    pub(super) async fn send_pending(&mut self) {
        if self.abandoned {
            self.pending.clear();
        }
        let most = (self.events.budget() / 4).max(1);
        while !self.pending.is_empty() {
            let (mut n, mut cost) = (0, 0);
            for line in &self.pending {
                let more = line_cost(line);
                if n > 0 && cost + more > most {
                    break;
                }
                (n, cost) = (n + 1, cost + more);
            }
            let room = self.events.room(cost).await;
            let group: Vec<StageEvent> = self.pending.drain(..n).map(StageEvent::Line).collect();
            let sent = room.is_some_and(|room| self.events.send_group(group, room).is_ok());
            if !sent {
                // Nobody listens any more (a closed UI): the stage goes on regardless.
                self.pending.clear();
            }
        }
    }

    /// Gives up on the rest of the log: the lines not sent yet and any to come are
    /// dropped (the receiver stopped taking them).
    pub(super) fn abandon(&mut self) {
        self.abandoned = true;
        self.pending.clear();
    }

    /// A whole line of the runner's own (a build result, a finding), masked like
    /// any output, sent after the lines before it.
    pub(super) async fn say(&mut self, stream: LogStreamKind, text: &str) {
        self.push(&LogChunk {
            stream,
            bytes: format!("{text}\n").into_bytes().into(),
        });
        self.send_pending().await;
    }

    /// The last, unterminated lines, sent after the rest.
    pub(super) async fn finish(&mut self) {
        let StepLines {
            stage,
            step,
            number,
            streams,
            pending,
            ..
        } = self;
        streams.finish(&mut |stream, bytes| {
            pending.push_back(line(stage, *step, number, stream, bytes));
        });
        self.send_pending().await;
    }
}

fn line(
    stage: &str,
    step: usize,
    number: &mut u64,
    stream: LogStreamKind,
    bytes: Vec<u8>,
) -> LogLine {
    *number += 1;
    LogLine {
        stage: stage.to_string(),
        step,
        number: *number,
        stream,
        time: SystemTime::now(),
        bytes,
    }
}
