//! Superseded cache entries. Every change to what goes into an image or a ready state
//! gives it a new key, and the old entry stays behind (0.3-0.8 GiB each): a checkout that
//! follows main for a week piles up gigabytes nobody will use again. Pruning keeps, in
//! each family of entries (the name without its key: `debian-13-ready-tcg`,
//! `debian-13-base`, `build-crun-trixie-<commit>`), the one used last, every entry a kept
//! disk is an overlay on (a ready state's disk is an overlay on its base's), and every
//! entry whose lock is held (a run is using or building it); it removes the rest, each
//! under its lock, and the lock files and staging directories nothing owns any more.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};

/// Why an entry stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// The family's entry used last.
    Newest,
    /// A kept entry's disk is an overlay on a file in this one.
    BackingOf(String),
    /// Its lock is held: a run is checking or building it.
    InUse,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superseded {
    pub path: PathBuf,
    pub bytes: u64,
    /// The family's entry used last, which replaced it.
    pub by: String,
}

/// What [`plan`] found under the cache's `images` directory.
#[derive(Debug, Default)]
pub struct Plan {
    pub kept: Vec<(PathBuf, Kept)>,
    pub superseded: Vec<Superseded>,
    /// Lock files without their entry, and staging directories of builds that ended
    /// without publishing (killed): nothing holds their locks.
    pub leftovers: Vec<PathBuf>,
}

impl Plan {
    pub fn superseded_bytes(&self) -> u64 {
        self.superseded.iter().map(|s| s.bytes).sum()
    }
}

/// The name of an entry without its key (a trailing `-` and 16 hex digits, as
/// [`crate::cache::key`] makes them); `None` for a name that is not an entry's.
pub fn family(name: &str) -> Option<&str> {
    let (family, key) = name.rsplit_once('-')?;
    let is_key = key.len() == 16 && key.bytes().all(|b| b.is_ascii_hexdigit());
    (is_key && !family.is_empty()).then_some(family)
}

/// The backing file a qcow2 image names in its header, `None` for an image without one
/// or a file that is not qcow2 (the header: magic, version, then the backing file name's
/// offset as a big-endian u64 and its length as a u32).
pub fn qcow2_backing(path: &Path) -> Result<Option<PathBuf>> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut header = [0u8; 20];
    if f.read_exact(&mut header).is_err() || &header[..4] != b"QFI\xfb" {
        return Ok(None);
    }
    let offset = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
    let len = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes")) as usize;
    if offset == 0 || len == 0 || len > 1023 {
        return Ok(None);
    }
    let mut name = vec![0u8; len];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut name)
        .with_context(|| format!("reading the backing file name of {}", path.display()))?;
    let name = PathBuf::from(String::from_utf8_lossy(&name).into_owned());
    // A relative name is relative to the image's directory.
    Ok(Some(match path.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name,
    }))
}

/// `lock`'s flock, taken without waiting; `None` while someone holds it (a run checking
/// or building its entry).
fn try_lock(lock: &Path) -> Result<Option<nix::fcntl::Flock<File>>> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock)
        .with_context(|| format!("opening {}", lock.display()))?;
    Ok(nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).ok())
}

/// Whether someone holds `lock`'s flock now.
fn held(lock: &Path) -> bool {
    lock.exists() && matches!(try_lock(lock), Ok(None))
}

fn lock_of(entry: &Path) -> PathBuf {
    entry.with_extension("lock")
}

/// When an entry was last used: its lock's time ([`crate::cache::lock`] touches it on
/// every use), else the directory's.
fn last_used(entry: &Path) -> SystemTime {
    std::fs::metadata(lock_of(entry))
        .or_else(|_| std::fs::metadata(entry))
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The staging directory's entry: `.NAME.building-XXXX` -> `NAME`.
fn staged_entry(name: &str) -> Option<&str> {
    name.strip_prefix('.')?
        .rsplit_once(".building-")
        .map(|(entry, _)| entry)
}

/// What pruning `images` (the cache's `images` directory) would keep and remove.
pub fn plan(images: &Path) -> Result<Plan> {
    let mut plan = Plan::default();
    let mut entries: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let listing = match std::fs::read_dir(images) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(plan),
        Err(e) => return Err(e).with_context(|| format!("listing {}", images.display())),
    };
    let mut locks = Vec::new();
    for item in listing {
        let item = item?;
        let path = item.path();
        let name = item.file_name().to_string_lossy().into_owned();
        if item.file_type()?.is_dir() {
            if let Some(entry) = staged_entry(&name) {
                if !held(&lock_of(&images.join(entry))) {
                    plan.leftovers.push(path);
                }
            } else if let Some(family) = family(&name) {
                dirs.insert(path.clone());
                entries.entry(family.to_string()).or_default().push(path);
            }
        } else if name.ends_with(".lock") {
            locks.push(path);
        }
    }
    for lock in locks {
        if !dirs.contains(&lock.with_extension("")) && !held(&lock) {
            plan.leftovers.push(lock);
        }
    }
    let mut kept: BTreeMap<PathBuf, Kept> = BTreeMap::new();
    let mut newest_of: BTreeMap<PathBuf, String> = BTreeMap::new();
    for members in entries.values() {
        let newest = members
            .iter()
            .max_by_key(|p| (last_used(p), (*p).clone()))
            .expect("a family has a member");
        let newest_name = newest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        kept.insert(newest.clone(), Kept::Newest);
        for m in members {
            if held(&lock_of(m)) {
                kept.entry(m.clone()).or_insert(Kept::InUse);
            }
            newest_of.insert(m.clone(), newest_name.clone());
        }
    }
    // What a kept disk is an overlay on stays, and what that one is on, and so on.
    let mut todo: Vec<PathBuf> = kept.keys().cloned().collect();
    while let Some(entry) = todo.pop() {
        for file in std::fs::read_dir(&entry).into_iter().flatten().flatten() {
            let file = file.path();
            if file.extension().is_none_or(|e| e != "qcow2") {
                continue;
            }
            let Some(backing) = qcow2_backing(&file)? else {
                continue;
            };
            let Some(owner) = dirs.iter().find(|d| backing.starts_with(d)) else {
                continue;
            };
            if !kept.contains_key(owner) {
                let by = entry
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                kept.insert(owner.clone(), Kept::BackingOf(by));
                todo.push(owner.clone());
            }
        }
    }
    for dir in dirs {
        if let Some(why) = kept.remove(&dir) {
            plan.kept.push((dir, why));
        } else {
            plan.superseded.push(Superseded {
                bytes: crate::cache::dir_size(&dir),
                by: newest_of.remove(&dir).unwrap_or_default(),
                path: dir,
            });
        }
    }
    Ok(plan)
}

/// Removes what `plan` found superseded or left over, each entry under its lock taken
/// without waiting (an entry a run took since the plan stays); the bytes freed and the
/// entries skipped because a run holds them.
pub fn apply(plan: &Plan) -> Result<(u64, Vec<PathBuf>)> {
    let mut freed = 0;
    let mut skipped = Vec::new();
    for s in &plan.superseded {
        let lock = lock_of(&s.path);
        let Some(guard) = try_lock(&lock)? else {
            skipped.push(s.path.clone());
            continue;
        };
        std::fs::remove_dir_all(&s.path)
            .with_context(|| format!("removing {}", s.path.display()))?;
        std::fs::remove_file(&lock).with_context(|| format!("removing {}", lock.display()))?;
        drop(guard);
        freed += s.bytes;
    }
    for path in &plan.leftovers {
        let removed = if path.is_dir() {
            freed += crate::cache::dir_size(path);
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok((freed, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(images: &Path, name: &str, age_s: u64) -> PathBuf {
        let dir = images.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("manifest.json"), "{}").unwrap();
        let lock = File::create(dir.with_extension("lock")).unwrap();
        lock.set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
        dir
    }

    fn qemu_img(args: &[&str]) {
        let st = std::process::Command::new("qemu-img")
            .args(args)
            .status()
            .expect("qemu-img (the lab's host tools) runs");
        assert!(st.success(), "qemu-img {args:?}");
    }

    #[test]
    fn a_family_is_the_name_without_its_key() {
        assert_eq!(
            family("debian-13-ready-tcg-443da1213620c99e"),
            Some("debian-13-ready-tcg")
        );
        assert_eq!(
            family("build-crun-trixie-0b1bdaf661-32b6df89384e2d6d"),
            Some("build-crun-trixie-0b1bdaf661")
        );
        assert_eq!(family("debian-13-ready-tcg"), None);
        assert_eq!(family("x-443da1213620c99"), None);
        assert_eq!(family("-443da1213620c99e"), None);
        assert_eq!(
            staged_entry(".debian-13-base-eeba46717077466f.building-Ab12"),
            Some("debian-13-base-eeba46717077466f")
        );
    }

    #[test]
    fn keeps_the_newest_of_each_family_and_what_its_disk_is_on() {
        let root = tempfile::tempdir().unwrap();
        let images = root.path();
        let old_base = entry(images, "t-base-1111111111111111", 300);
        let new_base = entry(images, "t-base-2222222222222222", 100);
        let old_ready = entry(images, "t-ready-tcg-3333333333333333", 200);
        let new_ready = entry(images, "t-ready-tcg-4444444444444444", 10);
        let other = entry(images, "u-base-5555555555555555", 9000);
        for base in [&old_base, &new_base] {
            let disk = base.join("disk.qcow2");
            qemu_img(&["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "1M"]);
        }
        // The newest ready state is an overlay on the *old* base: the old base stays.
        for (ready, base) in [(&old_ready, &new_base), (&new_ready, &old_base)] {
            let disk = ready.join("disk.qcow2");
            let backing = base.join("disk.qcow2");
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                backing.to_str().unwrap(),
                disk.to_str().unwrap(),
            ]);
            assert_eq!(qcow2_backing(&disk).unwrap(), Some(backing));
        }
        std::fs::write(images.join("gone-6666666666666666.lock"), "").unwrap();
        let staging = images.join(".t-base-7777777777777777.building-x1");
        std::fs::create_dir_all(&staging).unwrap();

        let p = plan(images).unwrap();
        let kept: BTreeMap<PathBuf, Kept> = p.kept.iter().cloned().collect();
        assert_eq!(kept[&new_ready], Kept::Newest);
        assert_eq!(kept[&new_base], Kept::Newest);
        assert_eq!(kept[&other], Kept::Newest);
        assert_eq!(
            kept[&old_base],
            Kept::BackingOf("t-ready-tcg-4444444444444444".into())
        );
        assert_eq!(
            p.superseded,
            vec![Superseded {
                bytes: crate::cache::dir_size(&old_ready),
                by: "t-ready-tcg-4444444444444444".into(),
                path: old_ready.clone(),
            }]
        );
        let mut leftovers = p.leftovers.clone();
        leftovers.sort();
        assert_eq!(
            leftovers,
            vec![staging.clone(), images.join("gone-6666666666666666.lock")]
        );

        let (freed, skipped) = apply(&p).unwrap();
        assert!(skipped.is_empty());
        assert!(freed >= p.superseded_bytes() && freed > 0);
        assert!(!old_ready.exists() && !old_ready.with_extension("lock").exists());
        assert!(!staging.exists());
        for d in [&new_ready, &new_base, &old_base, &other] {
            assert!(d.exists(), "{}", d.display());
        }
        // Pruning again finds nothing more.
        let again = plan(images).unwrap();
        assert!(again.superseded.is_empty() && again.leftovers.is_empty());
    }

    #[test]
    fn an_entry_whose_lock_is_held_stays() {
        let root = tempfile::tempdir().unwrap();
        let images = root.path();
        let old = entry(images, "t-ready-tcg-1111111111111111", 500);
        let new = entry(images, "t-ready-tcg-2222222222222222", 5);
        let building = images.join(".t-base-3333333333333333.building-q");
        std::fs::create_dir_all(&building).unwrap();
        // A run checks the old one while a build makes a base.
        let _using = crate::cache::lock(&old).unwrap();
        let _building = crate::cache::lock(&images.join("t-base-3333333333333333")).unwrap();

        // Taking the lock made it the one used last: make it older again.
        File::options()
            .write(true)
            .open(old.with_extension("lock"))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(500))
            .unwrap();

        let p = plan(images).unwrap();
        let kept: BTreeMap<PathBuf, Kept> = p.kept.iter().cloned().collect();
        assert_eq!(kept[&old], Kept::InUse);
        assert_eq!(kept[&new], Kept::Newest);
        assert!(p.superseded.is_empty(), "{:?}", p.superseded);
        assert!(p.leftovers.is_empty(), "{:?}", p.leftovers);
        // The one superseded meanwhile is skipped by apply, not removed under a run.
        let racing = Plan {
            superseded: vec![Superseded {
                path: old.clone(),
                bytes: 1,
                by: "t-ready-tcg-2222222222222222".into(),
            }],
            ..Plan::default()
        };
        let (freed, skipped) = apply(&racing).unwrap();
        assert_eq!((freed, skipped), (0, vec![old.clone()]));
        assert!(old.exists() && new.exists() && building.exists());
    }
}
