//! The workspace as listed inside the pod, so that artifacts are selected there
//! with the very rules of [`crate::artifacts`] (the walk runs on the listing, see
//! [`crate::artifacts::Tree`]) and only the selected files cross the wire.
//!
//! The listing is NUL-separated (any byte but NUL may be in a name): first
//! `r<root>`, the workspace resolved; then per entry below it, as `find` meets
//! them, `d<path>`, `f<path>`, `o<path>` (socket, FIFO, device), or
//! `l<path>` followed by one more record, the link's target resolved by
//! `readlink -f` — empty when it does not exist or the links loop. Paths start
//! with `./`. Busybox is enough (`find`, `readlink -f`, `printf`).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::artifacts::{EntryKind, Tree};
use crate::error::{Error, Result};

/// The largest listing read (names of a workspace with about a million files).
pub const MAX_LISTING_BYTES: u64 = 256 * 1024 * 1024;

/// The shell script that lists the workspace at `workspace` on stdout.
pub fn script(workspace: &str) -> String {
    // `for f do` runs in the `sh` that `find -exec … +` starts per batch of
    // names; `[`, `printf` are shell builtins, so a large tree costs no fork per
    // file (only symlinks run `readlink`).
    format!(
        r#"cd '{workspace}' || exit 1
printf 'r%s\0' "$(readlink -f .)"
find . -mindepth 1 -exec sh -c 'for f do
if [ -L "$f" ]; then t=$(readlink -f "$f"); [ -e "$t" ] || t=; printf "l%s\0%s\0" "$f" "$t"
elif [ -d "$f" ]; then printf "d%s\0" "$f"
elif [ -f "$f" ]; then printf "f%s\0" "$f"
else printf "o%s\0" "$f"
fi
done' sh {{}} +"#
    )
}

/// A parsed listing: a [`Tree`] for [`crate::artifacts::select`].
#[derive(Debug, Default)]
pub struct Listing {
    root: PathBuf,
    kinds: HashMap<PathBuf, EntryKind>,
    children: HashMap<PathBuf, Vec<OsString>>,
    /// Resolved targets of the symlinks (`None`: unresolvable).
    links: HashMap<PathBuf, Option<PathBuf>>,
}

fn malformed(why: impl std::fmt::Display) -> Error {
    Error::Backend {
        op: "collect_artifacts",
        message: format!("the workspace listing from the pod is malformed: {why}"),
    }
}

impl Listing {
    pub fn parse(raw: &[u8]) -> Result<Listing> {
        let Some(body) = raw.strip_suffix(b"\0") else {
            return Err(malformed("it does not end with a NUL"));
        };
        let mut records = body.split(|b| *b == 0);
        let root = match records.next() {
            Some([b'r', root @ ..]) if root.starts_with(b"/") => {
                PathBuf::from(OsStr::from_bytes(root))
            }
            _ => return Err(malformed("it does not start with the workspace root")),
        };
        let mut listing = Listing {
            root,
            ..Default::default()
        };
        while let Some(record) = records.next() {
            let Some((&tag, path)) = record.split_first() else {
                return Err(malformed("an empty record"));
            };
            let rel = relative(path)?;
            let kind = match tag {
                b'd' => EntryKind::Dir,
                b'f' => EntryKind::File,
                b'o' => EntryKind::Other,
                b'l' => {
                    let target = records
                        .next()
                        .ok_or_else(|| malformed("a symlink without its target"))?;
                    let target =
                        (!target.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(target)));
                    listing.links.insert(rel.clone(), target);
                    EntryKind::Symlink
                }
                other => return Err(malformed(format!("unknown entry type {:?}", other as char))),
            };
            let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            let name = rel
                .file_name()
                .ok_or_else(|| malformed("an entry without a name"))?
                .to_owned();
            listing.children.entry(parent).or_default().push(name);
            listing.kinds.insert(rel, kind);
        }
        Ok(listing)
    }
}

/// `./a/b` → `a/b`; anything but plain names below `.` is refused.
fn relative(raw: &[u8]) -> Result<PathBuf> {
    let path = Path::new(OsStr::from_bytes(raw));
    let mut rel = PathBuf::new();
    for (i, c) in path.components().enumerate() {
        match c {
            Component::CurDir if i == 0 => {}
            Component::Normal(n) => rel.push(n),
            _ => return Err(malformed(format!("the path {}", path.display()))),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(malformed("an entry for the root itself"));
    }
    Ok(rel)
}

impl Tree for Listing {
    fn root(&self) -> &Path {
        &self.root
    }

    fn entries(&self, rel_dir: &str) -> Result<Vec<(OsString, EntryKind)>> {
        let dir = Path::new(rel_dir);
        Ok(self
            .children
            .get(dir)
            .into_iter()
            .flatten()
            .map(|name| {
                let kind = self
                    .kinds
                    .get(&dir.join(name))
                    .copied()
                    .unwrap_or(EntryKind::Other);
                (name.clone(), kind)
            })
            .collect())
    }

    fn resolve(&self, rel: &str) -> io::Result<PathBuf> {
        let unresolvable = || {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no such file or directory, or the links loop",
            )
        };
        let target = self
            .links
            .get(Path::new(rel))
            .cloned()
            .flatten()
            .ok_or_else(unresolvable)?;
        match target.strip_prefix(&self.root) {
            Ok(inside) if !inside.as_os_str().is_empty() && !self.kinds.contains_key(inside) => {
                // Gone between `readlink` and `find`'s end.
                Err(unresolvable())
            }
            _ => Ok(target),
        }
    }

    fn is_file(&self, canonical: &Path) -> bool {
        canonical
            .strip_prefix(&self.root)
            .ok()
            .and_then(|rel| self.kinds.get(rel))
            == Some(&EntryKind::File)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::{glob_set, select};

    fn listing(records: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            out.extend_from_slice(r);
            out.push(0);
        }
        out
    }

    fn selected(raw: &[u8], globs: &[&str]) -> Result<Vec<String>> {
        let globs: Vec<String> = globs.iter().map(|g| g.to_string()).collect();
        let l = Listing::parse(raw)?;
        Ok(select(&l, &globs, &glob_set(&globs)?)?
            .into_keys()
            .collect())
    }

    #[test]
    fn selects_as_the_host_walk_does() {
        let raw = listing(&[
            b"r/workspace",
            b"d./out",
            b"f./out/a.txt",
            b"d./out/sub",
            b"f./out/sub/b.bin",
            b"f./top.log",
            b"l./link.txt",
            b"/workspace/out/a.txt",
            b"l./dirlink",
            b"/workspace/out",
            b"f./name\nwith newline.log",
            b"o./fifo.log",
            b"f./\xff.log",
        ]);
        assert_eq!(
            selected(&raw, &["out/*", "*.log", "link.txt", "dirlink"]).unwrap(),
            vec![
                "link.txt",
                "name\nwith newline.log",
                "out/a.txt",
                "out/sub/b.bin",
                "top.log"
            ]
        );
        assert_eq!(
            selected(&raw, &["nothing/*"]).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn refuses_links_out_and_unresolvable_links() {
        let out = listing(&[b"r/workspace", b"l./leak.txt", b"/etc/hostname"]);
        let err = selected(&out, &["*.txt"]).unwrap_err().to_string();
        assert!(err.contains("outside the workspace"), "{err}");
        let dangling = listing(&[b"r/workspace", b"l./d.txt", b""]);
        let err = selected(&dangling, &["*.txt"]).unwrap_err().to_string();
        assert!(err.contains("cannot resolve symlink"), "{err}");
        // Not matched: not looked at.
        assert!(selected(&out, &["*.log"]).unwrap().is_empty());
    }

    #[test]
    fn refuses_malformed_listings() {
        for raw in [
            &b"r/workspace"[..],
            b"\0",
            b"d./x\0",
            b"r/workspace\0d../up\0",
            b"r/workspace\0f/abs\0",
            b"r/workspace\0l./x\0",
            b"r/workspace\0x./x\0",
            b"r/workspace\0\0",
        ] {
            assert!(Listing::parse(raw).is_err(), "{raw:?}");
        }
    }
}
