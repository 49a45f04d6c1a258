//! The image cache under `$XDG_CACHE_HOME/socket-activation-lab`.
//!
//! An entry is a directory named by a key (a hash of everything that went into it). It is
//! built in a temporary sibling and renamed into place only when complete, with a
//! `manifest.json` listing every file and its size, checked on every use: a half-written
//! or truncated entry is never used, it is removed and rebuilt. Builds of one entry are
//! serialised with an flock.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The cache's root, as the caller configured it ([`crate::config`]).
pub fn root() -> PathBuf {
    crate::config::get().cache_root.clone()
}

/// A stable key from named parts: `sha256(name=value\n...)`, first 16 hex digits.
pub fn key(parts: &[(&str, &[u8])]) -> String {
    let mut h = Sha256::new();
    for (name, value) in parts {
        h.update(name.as_bytes());
        h.update(b"=");
        h.update((value.len() as u64).to_le_bytes());
        h.update(value);
    }
    hex(&h.finalize())[..16].to_string()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&h.finalize()))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub key: String,
    /// File name -> size in bytes.
    pub files: BTreeMap<String, u64>,
    /// Anything the builder wants to remember (versions read from the guest, ...).
    #[serde(default)]
    pub facts: BTreeMap<String, String>,
}

const MANIFEST: &str = "manifest.json";

impl Manifest {
    /// Reads and checks an entry: every listed file exists with its size.
    pub fn verify(dir: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(dir.join(MANIFEST))
            .with_context(|| format!("{} has no manifest", dir.display()))?;
        let m: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{}: corrupt manifest", dir.display()))?;
        for (name, size) in &m.files {
            let actual = std::fs::metadata(dir.join(name)).map(|md| md.len()).ok();
            if actual != Some(*size) {
                bail!(
                    "{}: {name} is {actual:?} bytes, the manifest says {size}",
                    dir.display()
                );
            }
        }
        Ok(m)
    }
}

/// A cache entry being built: a temporary directory beside its final place.
pub struct Staging {
    dir: tempfile::TempDir,
    target: PathBuf,
    key: String,
}

impl Staging {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the manifest (sizes of every file now present) and renames into place.
    pub fn publish(self, facts: BTreeMap<String, String>) -> Result<Manifest> {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(self.dir.path())? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                files.insert(
                    entry.file_name().to_string_lossy().into_owned(),
                    entry.metadata()?.len(),
                );
            }
        }
        let manifest = Manifest {
            key: self.key.clone(),
            files,
            facts,
        };
        std::fs::write(
            self.dir.path().join(MANIFEST),
            serde_json::to_string_pretty(&manifest)?,
        )?;
        crate::cleanup::unregister(self.dir.path());
        let staged = self.dir.keep();
        if self.target.exists() {
            std::fs::remove_dir_all(&self.target)?;
        }
        std::fs::rename(&staged, &self.target).with_context(|| {
            format!(
                "publishing {} as {}",
                staged.display(),
                self.target.display()
            )
        })?;
        Ok(manifest)
    }
}

/// Holds an exclusive lock on one cache entry until dropped: while the entry is checked
/// or built (`vm prune` leaves it alone), not while trials use it.
pub struct EntryLock {
    _file: nix::fcntl::Flock<File>,
}

/// Locks `dir`'s entry (blocking while another process builds it).
pub fn lock(dir: &Path) -> Result<EntryLock> {
    let parent = dir.parent().context("cache entry without parent")?;
    std::fs::create_dir_all(parent)?;
    let lock_path = dir.with_extension("lock");
    let file =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    // The lock's time is when the entry was last used: pruning keeps each family's newest.
    file.set_modified(std::time::SystemTime::now())
        .with_context(|| format!("touching {}", lock_path.display()))?;
    let file = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((file, _)) => {
            eprintln!("waiting for another build of {} to finish", dir.display());
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", lock_path.display()))?
        }
    };
    Ok(EntryLock { _file: file })
}

/// A stamp names the entry last resolved for a name whose entry key is only known after
/// a query (a suite's current package version, a repository's newest release), so a
/// later run reuses it without asking again. `vm clean` forgets both.
pub struct Stamp(PathBuf);

impl Stamp {
    pub fn new(path: PathBuf) -> Stamp {
        Stamp(path)
    }

    /// The stamped entry and its manifest, if the stamp names a complete one.
    pub fn entry(&self) -> Option<(PathBuf, Manifest)> {
        let dir = PathBuf::from(std::fs::read_to_string(&self.0).ok()?.trim());
        let m = lookup(&dir)?;
        Some((dir, m))
    }

    pub fn set(&self, dir: &Path) -> Result<()> {
        std::fs::write(&self.0, dir.display().to_string())
            .with_context(|| format!("writing {}", self.0.display()))
    }
}

/// The verified entry at `dir`, or `None` after removing a broken one. Call with the lock
/// held.
pub fn lookup(dir: &Path) -> Option<Manifest> {
    if !dir.exists() {
        return None;
    }
    match Manifest::verify(dir) {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("cache entry unusable, rebuilding: {e:#}");
            let _ = std::fs::remove_dir_all(dir);
            None
        }
    }
}

/// Like [`lookup`], and the manifest must have been written for `key`: an entry whose
/// manifest names another key (copied, renamed, or from another recipe) is removed.
pub fn lookup_keyed(dir: &Path, key: &str) -> Option<Manifest> {
    let m = lookup(dir)?;
    if m.key == key {
        return Some(m);
    }
    eprintln!(
        "cache entry unusable, rebuilding: {}: its manifest is for key {}, not {key}",
        dir.display(),
        m.key
    );
    let _ = std::fs::remove_dir_all(dir);
    None
}

/// A fresh staging directory for the entry at `dir` (same filesystem, so the final rename
/// is atomic). Removed on drop unless published.
pub fn stage(dir: &Path, key: &str) -> Result<Staging> {
    let parent = dir.parent().context("cache entry without parent")?;
    std::fs::create_dir_all(parent)?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("entry");
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.building-"))
        .tempdir_in(parent)?;
    crate::cleanup::register(tmp.path());
    Ok(Staging {
        dir: tmp,
        target: dir.to_path_buf(),
        key: key.to_string(),
    })
}

/// The entry directories under the cache root, without their sizes.
pub fn entry_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("images"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Sizes of the entries under the cache root, for `vm ls`.
pub fn entries() -> Result<Vec<(PathBuf, u64, bool)>> {
    Ok(entry_dirs()
        .into_iter()
        .map(|path| {
            let ok = Manifest::verify(&path).is_ok();
            let size = dir_size(&path);
            (path, size, ok)
        })
        .collect())
}

/// The disk space `path` takes: allocated blocks, since a ready state's memory file is
/// as long as the guest's memory and mostly holes. Symbolic links are counted, never
/// followed: a build root holds links to `/` and to `/proc`.
pub fn dir_size(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    match std::fs::read_dir(path) {
        Ok(rd) => own + rd.flatten().map(|e| dir_size(&e.path())).sum::<u64>(),
        Err(_) => own,
    }
}

/// A nonce recorded with each build, so anything derived from an image (its ready
/// snapshot) is invalidated when the image is rebuilt under the same key.
pub fn build_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}-{}", now.as_nanos(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_every_part() {
        let a = key(&[("a", b"1"), ("b", b"2")]);
        assert_eq!(a, key(&[("a", b"1"), ("b", b"2")]));
        assert_ne!(a, key(&[("a", b"1"), ("b", b"3")]));
        // Length-prefixed: moving a byte between parts changes the key.
        assert_ne!(
            key(&[("a", b"12"), ("b", b"")]),
            key(&[("a", b"1"), ("b", b"2")])
        );
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn published_entry_verifies_and_truncation_is_detected() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("images/t-abc");
        let _lock = lock(&dir).unwrap();
        assert!(lookup(&dir).is_none());
        let s = stage(&dir, "abc").unwrap();
        std::fs::write(s.path().join("disk.qcow2"), vec![7u8; 1000]).unwrap();
        s.publish(BTreeMap::from([(
            "podman".to_string(),
            "5.4.2".to_string(),
        )]))
        .unwrap();
        let m = lookup(&dir).expect("complete entry");
        assert_eq!(m.files["disk.qcow2"], 1000);
        assert_eq!(m.facts["podman"], "5.4.2");

        // A truncated file makes the entry unusable; lookup removes it.
        std::fs::write(dir.join("disk.qcow2"), vec![7u8; 10]).unwrap();
        assert!(lookup(&dir).is_none());
        assert!(!dir.exists());
    }

    #[test]
    fn an_unpublished_build_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("images/t-def");
        {
            let s = stage(&dir, "def").unwrap();
            std::fs::write(s.path().join("half"), b"x").unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(root.path().join("images"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
