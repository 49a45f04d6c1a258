//! Container images built offline from the Debian archive, like the guests, for what the
//! echo image cannot be: `systemd`, an image whose entrypoint is systemd (article 004:
//! systemd as the container's PID 1). Kept in the cache as a gzipped root file system
//! per suite; every ready state `podman import`s them all ([`crate::ready`]), so a trial
//! finds them in its guest's storage.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::events::{Event, Events};
use crate::target::{ImageSource, Target};
use crate::{cache, debian, proc};

/// One image the lab can build: what goes in, and what `podman import` adds.
struct Recipe {
    /// The name scenarios use (`prepare.images`).
    name: &'static str,
    packages: &'static [&'static str],
    /// `--change` instructions: the image's entrypoint.
    changes: &'static [&'static str],
}

const RECIPES: [Recipe; 1] = [Recipe {
    name: "systemd",
    packages: &["systemd", "systemd-sysv"],
    changes: &["CMD [\"/sbin/init\"]", "STOPSIGNAL SIGRTMIN+3"],
}];

/// The names of the images the lab can build.
pub fn known() -> Vec<&'static str> {
    RECIPES.iter().map(|r| r.name).collect()
}

fn recipe(image: &str) -> Result<&'static Recipe> {
    RECIPES.iter().find(|r| r.name == image).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown container image {image:?} (the lab builds: {})",
            known().join(", ")
        )
    })
}

/// The name the image gets in the guest.
pub fn local_name(image: &str) -> String {
    format!("localhost/sal-{image}:latest")
}

/// What `podman import` gets besides the tar (none for an unknown image).
pub fn import_changes(image: &str) -> &'static [&'static str] {
    recipe(image).map_or(&[], |r| r.changes)
}

/// Bump when what goes into the images changes.
const RECIPE: &str = "container-1";

/// The suite and mirror an image for `target` comes from: the guest's own suite, so the
/// container's systemd is the one the guest's Debian ships; trixie for other targets.
fn source(target: &Target) -> (String, String) {
    match &target.source {
        ImageSource::Debian { suite, mirror, .. } => (suite.clone(), mirror.clone()),
        ImageSource::Fedora { .. } => ("trixie".into(), "http://deb.debian.org/debian".into()),
    }
}

/// Every image the lab builds, for `target`: (name, gzipped root file system).
pub fn ensure_all(target: &Target, events: &Events) -> Result<Vec<(&'static str, PathBuf)>> {
    RECIPES
        .iter()
        .map(|r| {
            ensure(r.name, target, events)
                .map(|tar| (r.name, tar))
                .with_context(|| format!("building the {} container image", r.name))
        })
        .collect()
}

/// The gzipped root file system of `image` for `target`, from the cache, built first if
/// missing or broken.
pub fn ensure(image: &str, target: &Target, events: &Events) -> Result<PathBuf> {
    let packages: Vec<String> = recipe(image)?
        .packages
        .iter()
        .map(|p| p.to_string())
        .collect();
    let (suite, mirror) = source(target);
    let key = cache::key(&[
        ("recipe", RECIPE.as_bytes()),
        ("image", image.as_bytes()),
        ("suite", suite.as_bytes()),
        ("mirror", mirror.as_bytes()),
        ("packages", packages.join(",").as_bytes()),
    ]);
    let dir = cache::root()
        .join("images")
        .join(format!("container-{image}-{suite}-{key}"));
    let _lock = cache::lock(&dir)?;
    if cache::lookup_keyed(&dir, &key).is_some() {
        return Ok(dir.join("rootfs.tar.gz"));
    }
    let stage = cache::stage(&dir, &key)?;
    let label = format!("{image} image ({suite})");
    let tar = debian::debootstrap_with(
        &suite,
        &mirror,
        &packages,
        None,
        &debian::NO_DOCS,
        stage.path(),
        &label,
        events,
    )?;
    // Compressed, it is a third of the bytes to copy into a guest.
    let mut gzip = Command::new("gzip");
    gzip.arg("-1").arg(&tar);
    let out = proc::run_own_group(gzip, Duration::from_secs(600))?;
    if !out.success() {
        bail!("gzip {} failed: {}", tar.display(), out.combined());
    }
    let facts = BTreeMap::from([
        ("suite".to_string(), suite.clone()),
        ("build_id".to_string(), cache::build_id()),
    ]);
    stage.publish(facts)?;
    events.emit(Event::Note {
        target: target.name.clone(),
        text: format!("{label} cached in {}", dir.display()),
    });
    Ok(dir.join("rootfs.tar.gz"))
}
