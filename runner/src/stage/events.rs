//! The channel a stage's events go through, bounded by the bytes it holds: a step
//! printing faster than the receiver takes its lines is slowed down (the driver stops
//! reading the step's output, the backend's own bounded buffer fills, then the step's
//! pipe, and its writes block) instead of queueing its log in memory.
//!
//! Each log line costs its length plus [`LINE_OVERHEAD`] of the budget until the
//! receiver takes it; the lines of one read of a step's output go as a group, whose
//! share comes back when its last line is taken. Step starts and ends are few and
//! small: they go outside the budget ([`EventSender::send_now`]), in order with the
//! lines.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::outcome::{LogLine, StageEvent};

/// What a queued line costs beyond its bytes: the event itself, the stage name and
/// the allocations' own overhead.
pub const LINE_OVERHEAD: usize = 256;

/// A budget that holds a few of the runner agent's log batches (up to 1 MiB of output
/// each) while one is being posted.
pub const DEFAULT_EVENT_BUDGET: usize = 4 * 1024 * 1024;

/// A stage event channel holding at most `budget` bytes of log lines (a line larger
/// than the whole budget still passes, alone).
pub fn event_channel(budget: usize) -> (EventSender, EventReceiver) {
    let budget = budget.clamp(1, u32::MAX as usize);
    let room = Arc::new(Semaphore::new(budget));
    let (tx, rx) = mpsc::unbounded_channel();
    (
        EventSender {
            tx,
            room: room.clone(),
            budget,
        },
        EventReceiver {
            rx,
            room,
            group: Vec::new().into_iter(),
            held: None,
        },
    )
}

/// Events sent together (one event, or the lines of one read of a step's output) and
/// the share of the budget they hold until the last of them is received: one wait for
/// room, one send and one release per group rather than per line.
struct Queued {
    events: Vec<StageEvent>,
    room: Option<OwnedSemaphorePermit>,
}

/// The sending half of [`event_channel`].
#[derive(Clone)]
pub struct EventSender {
    tx: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    budget: usize,
}

impl std::fmt::Debug for EventSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSender")
            .field("budget", &self.budget)
            .field("room", &self.room.available_permits())
            .finish()
    }
}

/// The receiver is gone; the event was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl EventSender {
    /// Sends `event`, first waiting while the lines not yet received take up the
    /// budget. Cancel-safe: dropped while waiting, it queued nothing.
    pub async fn send(&self, event: StageEvent) -> Result<(), Closed> {
        match self.room_for(&event).await {
            Some(room) => self.send_with(event, room),
            None => Err(Closed),
        }
    }

    /// Sends `event` at once, outside the budget: for step starts and ends (a few
    /// small events per step), which must not wait behind a step's output.
    pub fn send_now(&self, event: StageEvent) -> Result<(), Closed> {
        self.tx
            .send(Queued {
                events: vec![event],
                room: None,
            })
            .map_err(|_| Closed)
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits for `event`'s share of the budget; `None` once the receiver is gone.
    async fn room_for(&self, event: &StageEvent) -> Option<OwnedSemaphorePermit> {
        let cost = match event {
            StageEvent::Line(line) => line_cost(line),
            StageEvent::StepStarted { .. }
            | StageEvent::StepFinished { .. }
            | StageEvent::Waiting { .. } => LINE_OVERHEAD,
        };
        self.room(cost).await
    }

    /// The whole budget, in bytes.
    pub(super) fn budget(&self) -> usize {
        self.budget
    }

    /// Waits for `cost` bytes of the budget (at most all of it); `None` once the
    /// receiver is gone.
    pub(super) async fn room(&self, cost: usize) -> Option<OwnedSemaphorePermit> {
        let cost = cost.clamp(1, self.budget) as u32;
        self.room.clone().acquire_many_owned(cost).await.ok()
    }

    fn send_with(&self, event: StageEvent, room: OwnedSemaphorePermit) -> Result<(), Closed> {
        self.send_group(vec![event], room)
    }

    /// Sends `events` in order as one group holding `room` until the last is received.
    pub(super) fn send_group(
        &self,
        events: Vec<StageEvent>,
        room: OwnedSemaphorePermit,
    ) -> Result<(), Closed> {
        self.tx
            .send(Queued {
                events,
                room: Some(room),
            })
            .map_err(|_| Closed)
    }
}

/// What `line` takes of the budget while it waits to be received.
pub(super) fn line_cost(line: &LogLine) -> usize {
    line.bytes.len() + line.stage.len() + LINE_OVERHEAD
}

/// The receiving half of [`event_channel`]. Taking an event gives its share of the
/// budget back. Dropping the receiver wakes a sender waiting for room (its send fails).
pub struct EventReceiver {
    rx: mpsc::UnboundedReceiver<Queued>,
    room: Arc<Semaphore>,
    /// The rest of the group being received…
    group: std::vec::IntoIter<StageEvent>,
    /// …and its share of the budget, given back with its last event.
    held: Option<OwnedSemaphorePermit>,
}

impl EventReceiver {
    /// The next event; `None` once every sender is gone and all was received.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<StageEvent> {
        loop {
            if let Some(event) = self.take() {
                return Some(event);
            }
            let queued = self.rx.recv().await?;
            self.start(queued);
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<StageEvent> {
        loop {
            if let Some(event) = self.take() {
                return Some(event);
            }
            let queued = self.rx.try_recv().ok()?;
            self.start(queued);
        }
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.group.len() == 0 && self.rx.is_empty()
    }

    fn take(&mut self) -> Option<StageEvent> {
        let event = self.group.next();
        if self.group.len() == 0 {
            self.held = None;
        }
        event
    }

    fn start(&mut self, queued: Queued) {
        self.group = queued.events.into_iter();
        self.held = queued.room;
    }

    /// The part of the budget the waiting events leave free, in bytes.
    pub fn room(&self) -> usize {
        self.room.available_permits()
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        self.room.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::LogStreamKind;

    fn line(number: u64, len: usize) -> StageEvent {
        StageEvent::Line(LogLine {
            stage: "s".into(),
            step: 0,
            number,
            stream: LogStreamKind::Stdout,
            time: SystemTime::UNIX_EPOCH,
            bytes: vec![b'x'; len],
        })
    }

    #[tokio::test]
    async fn lines_wait_for_room_and_received_ones_give_it_back() {
        let each = 1000 + 1 + LINE_OVERHEAD;
        let (tx, mut rx) = event_channel(3 * each);
        for n in 1..=3 {
            tx.send(line(n, 1000)).await.unwrap();
        }
        // The budget is used up: the fourth line waits…
        let mut fourth = Box::pin(tx.send(line(4, 1000)));
        assert!(futures::poll!(fourth.as_mut()).is_pending());
        // …but a step's end does not, and stays in order.
        tx.send_now(StageEvent::StepStarted {
            stage: "s".into(),
            index: 1,
            name: "next".into(),
        })
        .unwrap();
        // Taking one line makes room for it.
        assert!(matches!(rx.recv().await, Some(StageEvent::Line(l)) if l.number == 1));
        fourth.await.unwrap();
        let mut order = Vec::new();
        while let Some(event) = rx.try_recv() {
            order.push(match event {
                StageEvent::Line(l) => l.number.to_string(),
                StageEvent::StepStarted { name, .. } => name,
                StageEvent::StepFinished { name, .. } => name,
                StageEvent::Waiting { reason, .. } => format!("waiting {reason:?}"),
            });
        }
        assert_eq!(order, ["2", "3", "next", "4"]);
        assert!(rx.is_empty());
    }

    #[tokio::test]
    async fn a_group_holds_its_room_until_its_last_event_is_taken() {
        let each = 10 + 1 + LINE_OVERHEAD;
        let (tx, mut rx) = event_channel(3 * each);
        let room = tx.room(2 * each).await.unwrap();
        tx.send_group(vec![line(1, 10), line(2, 10)], room).unwrap();
        tx.send(line(3, 10)).await.unwrap();
        assert_eq!(rx.room(), 0);
        assert!(!rx.is_empty());
        assert!(matches!(rx.recv().await, Some(StageEvent::Line(l)) if l.number == 1));
        assert_eq!(rx.room(), 0, "half a group taken gives nothing back");
        assert!(matches!(rx.try_recv(), Some(StageEvent::Line(l)) if l.number == 2));
        assert_eq!(rx.room(), 2 * each);
        assert!(matches!(rx.recv().await, Some(StageEvent::Line(l)) if l.number == 3));
        assert_eq!(rx.room(), 3 * each);
        assert!(rx.is_empty());
    }

    #[tokio::test]
    async fn a_line_larger_than_the_budget_passes_alone() {
        let (tx, mut rx) = event_channel(100);
        tx.send(line(1, 10_000)).await.unwrap();
        assert_eq!(rx.room(), 0);
        let mut second = Box::pin(tx.send(line(2, 1)));
        assert!(futures::poll!(second.as_mut()).is_pending());
        rx.recv().await.unwrap();
        second.await.unwrap();
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_fails_when_the_receiver_goes() {
        let (tx, rx) = event_channel(100);
        tx.send(line(1, 100)).await.unwrap();
        let mut waiting = Box::pin(tx.send(line(2, 100)));
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        drop(rx);
        assert_eq!(waiting.await, Err(Closed));
        assert!(tx.is_closed());
        assert!(tx.send_now(line(3, 1)).is_err());
    }
}
