//! The build context: a tar, in memory or streamed, and a Dockerfile from outside it.

use std::io;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};

/// What the engine builds from: the context tar, in memory or streamed (e.g. straight
/// from the engine's archive endpoint of a workspace volume, without buffering it).
pub struct BuildContext {
    pub(super) tar: ContextTar,
    /// The Dockerfile's content when it lies outside the context.
    pub(super) outside_dockerfile: Option<Bytes>,
}

pub(super) enum ContextTar {
    Bytes(Bytes),
    Stream(BoxStream<'static, io::Result<Bytes>>),
}

impl BuildContext {
    /// `tar`: an uncompressed tar of the context directory, entry names relative to it
    /// (`Dockerfile`, `./src/main.rs`).
    pub fn new(tar: impl Into<Bytes>) -> Self {
        BuildContext {
            tar: ContextTar::Bytes(tar.into()),
            outside_dockerfile: None,
        }
    }

    /// The same tar as a stream of chunks; an `Err` item aborts the build (retryable).
    pub fn from_stream(tar: impl Stream<Item = io::Result<Bytes>> + Send + 'static) -> Self {
        BuildContext {
            tar: ContextTar::Stream(tar.boxed()),
            outside_dockerfile: None,
        }
    }

    /// The Dockerfile's content, required when [`locate_dockerfile`](super::locate_dockerfile) says
    /// [`DockerfileLocation::OutsideContext`](super::DockerfileLocation::OutsideContext) (ignored otherwise).
    pub fn with_dockerfile(mut self, dockerfile: impl Into<Bytes>) -> Self {
        self.outside_dockerfile = Some(dockerfile.into());
        self
    }
}

impl From<Vec<u8>> for BuildContext {
    fn from(tar: Vec<u8>) -> Self {
        BuildContext::new(tar)
    }
}

impl From<Bytes> for BuildContext {
    fn from(tar: Bytes) -> Self {
        BuildContext::new(tar)
    }
}
