//! Moving files in and out of a stage's workspace volume.
//!
//! A volume has no API for its content, so a helper container of the stage image
//! is *created* (never started: it needs no shell, no binaries, nothing running)
//! with the volume mounted at `/workspace`, and the engine's archive endpoints copy
//! through it.

use std::path::Path;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures::{Stream, StreamExt};

use super::{WORKSPACE, engine, names};
use crate::archive::Owner;
use crate::error::{Error, Result};

/// A created-not-started container mounting a stage's volume. Callers remove it
/// with [`IoContainer::remove`] on every path (removal is async, so there is no
/// `Drop`); one that survives a crash carries the stage's labels and is swept.
pub struct IoContainer {
    pub name: String,
}

impl IoContainer {
    pub async fn create(
        docker: &Docker,
        runner: &str,
        stage: &str,
        image: &str,
    ) -> Result<IoContainer> {
        let name = names::io_container(stage);
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            // Never started; the engine only insists that a command exists.
            cmd: Some(vec!["/slipway-io-never-started".into()]),
            labels: Some(names::labels(runner, stage, "io")),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                mounts: Some(vec![workspace_mount(stage)]),
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        docker
            .create_container(Some(opts), body)
            .await
            .map_err(engine::err("create_container (workspace io)"))?;
        Ok(IoContainer { name })
    }

    /// Uploads the tar file at `archive` into `dir` of the container.
    pub async fn upload_file(&self, docker: &Docker, archive: &Path, dir: &str) -> Result<()> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| Error::io(format!("opening {}", archive.display()), e))?;
        let body = tokio_util::io::ReaderStream::new(file);
        let opts = UploadToContainerOptionsBuilder::new().path(dir).build();
        docker
            .upload_to_container(&self.name, Some(opts), bollard::body_try_stream(body))
            .await
            .map_err(engine::err("upload_to_container"))
    }

    /// A tar of `path` in the container (`<dir>/.` for a directory's content
    /// without the directory itself). Engine errors are left as they are, so that
    /// callers can tell "no such path" (404) from a failure.
    pub fn download(
        &self,
        docker: &Docker,
        path: &str,
    ) -> impl Stream<Item = std::result::Result<bytes::Bytes, bollard::errors::Error>> + use<> {
        let opts = DownloadFromContainerOptionsBuilder::new()
            .path(path)
            .build();
        docker.download_from_container(&self.name, Some(opts))
    }

    /// Reads one small file of the image (e.g. `/etc/passwd`); `None` if absent.
    pub async fn read_small_file(&self, docker: &Docker, path: &str) -> Result<Option<Vec<u8>>> {
        const LIMIT: usize = 4 << 20;
        let mut stream = std::pin::pin!(self.download(docker, path));
        let mut tar = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    tar.extend_from_slice(&c);
                    if tar.len() > LIMIT {
                        return Err(Error::InvalidSpec(format!(
                            "{path} in the image is too large"
                        )));
                    }
                }
                Err(e) if engine::is_not_found(&e) => return Ok(None),
                Err(e) => return Err(engine::err("download_from_container")(e)),
            }
        }
        let mut ar = tar::Archive::new(&tar[..]);
        let entries = ar
            .entries()
            .map_err(|e| Error::io(format!("reading {path}"), e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| Error::io(format!("reading {path}"), e))?;
            if entry.header().entry_type().is_file() {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut out)
                    .map_err(|e| Error::io(format!("reading {path}"), e))?;
                return Ok(Some(out));
            }
        }
        Ok(None)
    }

    pub async fn remove(self, docker: &Docker) -> Result<()> {
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        engine::gone_ok(docker.remove_container(&self.name, Some(opts)).await)
            .map_err(engine::err("remove_container (workspace io)"))
    }
}

/// The stage's volume mounted at `/workspace`. The volume is named like the stage.
///
/// `no_copy`: without it the engine copies the image's `/workspace` into a volume
/// it finds empty on first start — and gives the volume root that directory's
/// owner (root), undoing the ownership the upload set for a non-root step user.
pub fn workspace_mount(stage: &str) -> Mount {
    Mount {
        target: Some(WORKSPACE.into()),
        source: Some(stage.to_owned()),
        typ: Some(MountType::VOLUME),
        volume_options: Some(MountVolumeOptions {
            no_copy: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The uid/gid a `user` setting (`uid`, `uid:gid`, `name`, `name:group`) stands
/// for in an image, from the image's `/etc/passwd` and `/etc/group` when names are
/// used. Steps run as this user, so the workspace is given to it.
pub async fn resolve_owner(docker: &Docker, io: &IoContainer, user: &str) -> Result<Owner> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = if u.parse::<u64>().is_err() || g.is_some_and(|g| g.parse::<u64>().is_err()) {
        io.read_small_file(docker, "/etc/passwd").await?
    } else {
        None
    };
    let passwd = String::from_utf8_lossy(passwd.as_deref().unwrap_or_default()).into_owned();
    let entry = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name).then(|| (f[2].parse().ok(), f[3].parse().ok()))
        })
    };
    let (uid, default_gid) = match u.parse::<u64>() {
        Ok(uid) => (uid, entry_by_uid(&passwd, uid).unwrap_or(uid)),
        Err(_) => match entry(u) {
            Some((Some(uid), Some(gid))) => (uid, gid),
            _ => {
                return Err(Error::InvalidSpec(format!(
                    "user `{u}` is not in the image's /etc/passwd; use a numeric uid"
                )));
            }
        },
    };
    let gid = match g {
        None => default_gid,
        Some(g) => match g.parse::<u64>() {
            Ok(gid) => gid,
            Err(_) => {
                let group = io.read_small_file(docker, "/etc/group").await?;
                let group =
                    String::from_utf8_lossy(group.as_deref().unwrap_or_default()).into_owned();
                group
                    .lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() >= 3 && f[0] == g)
                            .then(|| f[2].parse().ok())
                            .flatten()
                    })
                    .ok_or_else(|| {
                        Error::InvalidSpec(format!(
                            "group `{g}` is not in the image's /etc/group; use a numeric gid"
                        ))
                    })?
            }
        },
    };
    Ok(Owner { uid, gid })
}

fn entry_by_uid(passwd: &str, uid: u64) -> Option<u64> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse::<u64>().ok() == Some(uid))
            .then(|| f[3].parse().ok())
            .flatten()
    })
}
