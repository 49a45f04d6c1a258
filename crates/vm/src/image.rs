//! Base images: a target's disk in the cache, built from Debian packages ([`crate::debian`])
//! or downloaded and provisioned (Fedora, [`crate::fedora`]), with the ssh keys that reach
//! it, and the overlays trials write to instead of it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::cache;
use crate::debian;
use crate::events::Events;
use crate::guest::SshKeys;
use crate::proc;
use crate::target::{ImageSource, Target};

/// The Debian guests' kernel command line. `mitigations=off init_on_alloc=0`: a throwaway
/// guest on an emulated CPU (`qemu64`) needs neither the speculation workarounds
/// (retpolines, RSB filling, barriers) nor zeroed kernel allocations, and nothing a scenario
/// tests depends on them. Measured here, a container's first `podman run` after a restore
/// (4 interleaved pairs, TCG, 1 vCPU): 3.36-3.98 s with them, 3.21-3.85 s without, each
/// pair in favour of without (0.94x on average).
pub const KERNEL_CMDLINE: &str =
    "root=/dev/vda rw console=ttyS0 quiet mitigations=off init_on_alloc=0";

/// A built (or fetched) base image in the cache.
#[derive(Debug, Clone)]
pub struct BaseImage {
    pub dir: PathBuf,
    pub disk: PathBuf,
    /// Direct kernel boot files (Debian); `None` when the disk boots itself (Fedora).
    pub kernel: Option<(PathBuf, PathBuf)>,
    pub keys: SshKeys,
    pub manifest: cache::Manifest,
}

/// The cache key of a target's base image: its file and the Debian recipe (for Fedora
/// targets too, so that their keys stay what they were).
pub fn base_key(target: &Target) -> String {
    cache::key(&[
        ("target", target.file_text.as_bytes()),
        // The archive may come from the host's apt or the environment, not the file.
        (
            "mirror",
            match &target.source {
                ImageSource::Debian { mirror, .. } => mirror.as_bytes(),
                ImageSource::Fedora { .. } => b"",
            },
        ),
        ("recipe", debian::RECIPE_VERSION.as_bytes()),
        (
            "builder_packages",
            debian::BUILDER_PACKAGES.join(",").as_bytes(),
        ),
        ("customize", debian::customize_script(target).as_bytes()),
    ])
}

pub fn base_dir(target: &Target) -> PathBuf {
    cache::root()
        .join("images")
        .join(format!("{}-base-{}", target.name, base_key(target)))
}

fn load(dir: &Path, manifest: cache::Manifest) -> BaseImage {
    let kernel = manifest
        .files
        .contains_key("vmlinuz")
        .then(|| (dir.join("vmlinuz"), dir.join("initrd.img")));
    BaseImage {
        dir: dir.to_path_buf(),
        disk: dir.join("disk.qcow2"),
        kernel,
        keys: SshKeys {
            identity: dir.join("id_ed25519"),
            known_hosts: dir.join("known_hosts"),
        },
        manifest,
    }
}

/// The target's base image from the cache, built first if missing or broken.
pub fn ensure_base(target: &Target, events: &Events) -> Result<BaseImage> {
    let dir = base_dir(target);
    let _lock = cache::lock(&dir)?;
    if let Some(m) = cache::lookup_keyed(&dir, &base_key(target)) {
        return Ok(load(&dir, m));
    }
    let key = base_key(target);
    let manifest = match &target.source {
        ImageSource::Debian { .. } => debian::build(target, &dir, &key, events)?,
        ImageSource::Fedora { .. } => {
            crate::fedora::download_and_provision(target, &dir, &key, events)?
        }
    };
    Ok(load(&dir, manifest))
}

/// A qcow2 overlay on `base`: all writes go to the overlay, the base is never written.
pub fn overlay(base: &Path, path: &Path) -> Result<()> {
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(path);
    proc::check(c, None, Duration::from_secs(60))?;
    Ok(())
}
