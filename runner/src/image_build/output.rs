//! Build and push output into the stage log, registry password redacted.

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;

use crate::backend::{LogChunk, LogStreamKind};

/// Where build and push output goes, with the registry password (if any) redacted
/// from everything that leaves `image_build`.
pub(super) struct Output {
    pub(super) log: UnboundedSender<LogChunk>,
    pub(super) password: Option<String>,
}

impl Output {
    pub(super) fn redact(&self, text: &str) -> String {
        match &self.password {
            Some(p) => text.replace(p.as_str(), "***"),
            None => text.to_owned(),
        }
    }

    /// Output as the engine sent it (build output may split a line across messages;
    /// [`crate::run_stage`] assembles lines).
    pub(super) fn send_raw(&self, stream: LogStreamKind, text: &str) {
        let _ = self.log.send(LogChunk {
            stream,
            bytes: Bytes::from(self.redact(text)),
        });
    }

    /// One whole line (a status message).
    pub(super) fn send(&self, stream: LogStreamKind, text: &str) {
        let mut line = self.redact(text);
        if !line.ends_with('\n') {
            line.push('\n');
        }
        // The receiver may be gone (stage cancelled); the build result still matters.
        let _ = self.log.send(LogChunk {
            stream,
            bytes: Bytes::from(line),
        });
    }
}
