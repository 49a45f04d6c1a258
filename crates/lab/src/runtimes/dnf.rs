//! `NAME@VERSION` runtimes of Fedora targets: that version from the target's own
//! repositories. dnf in the guest finds it (`repoquery`) and downloads it with what it
//! needs (`download --resolve`); the packages are copied to the host, their signatures
//! checked there with `rpmkeys` against the release key shipped in `vm/keys` (not against
//! whatever the guest trusts), and cached. Each trial then installs them with dnf from the
//! local files, which replaces the guest's own runtime for that trial only: every trial
//! runs on its own overlay of the frozen disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use vm::cache;
use vm::guest::Guest;
use vm::proc;

use crate::events::Events;
use crate::runtimes::install::{Installed, Unusable, usable};
use crate::runtimes::{Origin, RuntimeSpec};

/// Where packages are put in the guest, for download and for install.
const GUEST_DIR: &str = "/var/tmp/socket-activation-lab-rpms";
const ARCHES: &str = "x86_64,noarch";

/// The packages of one runtime version, cached on the host.
#[derive(Debug, Clone)]
pub struct DnfPackages {
    pub spec: RuntimeSpec,
    /// `name-[epoch:]version-release.arch` as dnf resolved it.
    pub nevra: String,
    /// The runtime's package and the dependencies the guest did not have.
    pub rpms: Vec<PathBuf>,
}

/// dnf 4 (Debian's, older Fedora) or dnf5 (Fedora 41 and later): a few options differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Dnf4,
    Dnf5,
}

impl Flavor {
    /// From the first line of `dnf --version`: `dnf5 version 5.2.16.0` or `4.23.0`.
    pub fn from_version(output: &str) -> Flavor {
        if output.lines().next().unwrap_or_default().contains("dnf5") {
            Flavor::Dnf5
        } else {
            Flavor::Dnf4
        }
    }

    /// The command that installs local package files and nothing from the repositories,
    /// without dnf's own signature check (the host checked them; see the module doc).
    pub fn install_local(self, files: &str) -> String {
        let (no_repos, no_gpg) = match self {
            Flavor::Dnf4 => ("--disablerepo='*'", "--nogpgcheck"),
            Flavor::Dnf5 => ("--disable-repo='*'", "--no-gpgchecks"),
        };
        format!("dnf -q -y {no_repos} {no_gpg} --setopt=install_weak_deps=False install {files}")
    }
}

/// The non-empty lines of a `repoquery --queryformat '...\n'` (dnf4 adds a newline of its
/// own after each entry, dnf5 does not).
pub fn query_lines(output: &str) -> Vec<String> {
    output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether `rpmkeys --checksig` output says every digest and signature is good. An
/// unsigned package prints `digests OK`: that is not enough.
pub fn signature_ok(checksig: &str) -> bool {
    let line = checksig.lines().next().unwrap_or_default();
    line.contains("signatures OK") && !line.contains("NOT OK")
}

fn version_of(spec: &RuntimeSpec) -> Result<&str> {
    match &spec.origin {
        Origin::Version(v) => Ok(v),
        _ => bail!("{spec} names no version; only NAME@VERSION runtimes are fetched with dnf"),
    }
}

/// The newest NEVRA of `spec` in the guest's repositories; an error listing what they do
/// have when the version is not there.
fn resolve(guest: &Guest, target: &str, spec: &RuntimeSpec) -> Result<String> {
    let version = version_of(spec)?;
    let t = Duration::from_secs(600);
    let query = |what: &str, format: &str| -> Result<Vec<String>> {
        let out = guest.root_ok(
            &format!(
                "dnf -q repoquery --available --arch={ARCHES} --queryformat '{format}\\n' {what}"
            ),
            t,
        )?;
        Ok(query_lines(&out.stdout))
    };
    let found = query(
        &format!("{}-{version}", spec.name),
        "%{name}-%{evr}.%{arch}",
    )?;
    if let Some(nevra) = found.last() {
        return Ok(nevra.clone());
    }
    let available = query(&spec.name, "%{evr}")?;
    if available.is_empty() {
        bail!("{target}'s repositories have no package {}", spec.name);
    }
    bail!(
        "{} {version} is not in {target}'s repositories; they have {} (a release's repositories keep its first version and its latest update only)",
        spec.name,
        available.join(", ")
    )
}

/// Checks each package's digests and signature with rpmkeys against `key` (a binary or
/// armored OpenPGP key), in a throwaway rpm database.
pub fn verify_signatures(rpms: &[PathBuf], key: &Path) -> Result<()> {
    if !vm::proc::runs("rpmkeys") || !vm::proc::runs("gpg") {
        bail!(
            "checking package signatures needs rpmkeys (package rpm) and gpg (package gnupg) on the host"
        );
    }
    let scratch = tempfile::tempdir()?;
    let home = scratch.path().join("gnupg");
    std::fs::create_dir(&home)?;
    let t = Duration::from_secs(60);
    // rpmkeys imports armored keys only; vm/keys holds binary keyrings.
    let mut import = Command::new("gpg");
    import
        .arg("--homedir")
        .arg(&home)
        .args(["--batch", "--quiet", "--import"])
        .arg(key);
    proc::check(import, None, t).with_context(|| format!("reading key {}", key.display()))?;
    let mut export = Command::new("gpg");
    export
        .arg("--homedir")
        .arg(&home)
        .args(["--batch", "--armor", "--export"]);
    let armored = proc::check(export, None, t)?.stdout;
    let asc = scratch.path().join("key.asc");
    std::fs::write(&asc, armored)?;
    let db = scratch.path().join("rpmdb");
    std::fs::create_dir(&db)?;
    let mut rk = Command::new("rpmkeys");
    rk.arg("--dbpath").arg(&db).arg("--import").arg(&asc);
    proc::check(rk, None, t)?;
    for rpm in rpms {
        let mut c = Command::new("rpmkeys");
        c.arg("--dbpath").arg(&db).arg("--checksig").arg(rpm);
        let out = proc::run(c, None, t)?;
        if !out.success() || !signature_ok(&out.stdout) {
            let text = out.combined();
            let unsigned = !text.to_lowercase().contains("signatures");
            bail!(
                "{}: the signature does not verify with {}{}: {}",
                rpm.file_name().unwrap_or_default().to_string_lossy(),
                key.display(),
                if unsigned {
                    " (the package is not signed)"
                } else {
                    ""
                },
                text.trim()
            );
        }
    }
    Ok(())
}

fn cache_dir(target: &str) -> PathBuf {
    cache::root().join("runtimes/dnf").join(target)
}

fn loaded(spec: &RuntimeSpec, dir: &Path, m: &cache::Manifest) -> DnfPackages {
    DnfPackages {
        spec: spec.clone(),
        nevra: m.facts.get("nevra").cloned().unwrap_or_default(),
        rpms: m
            .files
            .keys()
            .filter(|f| f.ends_with(".rpm"))
            .map(|f| dir.join(f))
            .collect(),
    }
}

/// Fetches (or reuses) `spec`'s packages for `target` through dnf in `guest`, checking
/// their signatures against `key`.
pub fn download(
    guest: &Guest,
    target: &str,
    spec: &RuntimeSpec,
    key: &Path,
    events: &Events,
) -> Result<DnfPackages> {
    version_of(spec)?;
    let root = cache_dir(target);
    // Reuse what was fetched before; `vm clean` forgets it (and so picks up new updates).
    let stamp = cache::Stamp::new(root.join(format!("{spec}.current")));
    if let Some((dir, m)) = stamp.entry() {
        return Ok(loaded(spec, &dir, &m));
    }
    std::fs::create_dir_all(&root)?;
    let step = events.step(target, &format!("fetching {spec} with dnf"));
    let nevra = resolve(guest, target, spec)?;
    let dir = root.join(nevra.replace([':', '~', '^'], "_"));
    let _lock = cache::lock(&dir)?;
    if let Some(m) = cache::lookup_keyed(&dir, &nevra) {
        stamp.set(&dir)?;
        step.done();
        return Ok(loaded(spec, &dir, &m));
    }
    let stage = cache::stage(&dir, &nevra)?;
    let t = Duration::from_secs(900);
    guest.root_ok(
        &format!(
            "rm -rf {GUEST_DIR} && mkdir -p {GUEST_DIR} && dnf -q -y download --resolve --destdir {GUEST_DIR} {nevra}"
        ),
        t,
    )?;
    let listing = guest.root_ok(&format!("cd {GUEST_DIR} && ls -1 -- *.rpm"), t)?;
    let mut rpms = Vec::new();
    for file in query_lines(&listing.stdout) {
        let local = stage.path().join(&file);
        guest.copy_out(&format!("{GUEST_DIR}/{file}"), &local, t)?;
        rpms.push(local);
    }
    let main = format!("{nevra}.rpm");
    if !rpms.iter().any(|p| p.ends_with(&main)) {
        bail!("dnf download of {nevra} did not produce {main}; it wrote {rpms:?}");
    }
    verify_signatures(&rpms, key)?;
    let m = stage.publish(BTreeMap::from([("nevra".to_string(), nevra)]))?;
    stamp.set(&dir)?;
    step.done();
    Ok(loaded(spec, &dir, &m))
}

/// Installs the fetched packages in `guest` with dnf (replacing the guest's own version,
/// upward or downward), then checks the runtime like any other.
pub fn install(
    guest: &Guest,
    fetched: &DnfPackages,
    image: &str,
) -> Result<std::result::Result<Installed, Unusable>> {
    let spec = &fetched.spec;
    let t = Duration::from_secs(600);
    guest.root_ok(&format!("rm -rf {GUEST_DIR} && mkdir -p {GUEST_DIR}"), t)?;
    for rpm in &fetched.rpms {
        let name = rpm.file_name().unwrap_or_default().to_string_lossy();
        guest.copy_in(rpm, &format!("{GUEST_DIR}/{name}"), 0o644)?;
    }
    let version = guest.root_ok("dnf --version", t)?;
    let flavor = Flavor::from_version(&version.stdout);
    // Signatures were checked on the host against the key in vm/keys; dnf installs from
    // the local files alone, so what runs is what was checked.
    let out = guest.root(&flavor.install_local(&format!("{GUEST_DIR}/*.rpm")), t)?;
    if !out.success() {
        bail!(
            "{spec}: dnf cannot install {} on this guest: {}",
            fetched.nevra,
            proc::tail(out.combined().trim(), 5)
        );
    }
    let name = &spec.name;
    let path = guest
        .root_ok(
            &format!("rpm -ql {name} | grep -E '/s?bin/{name}$' | head -n1"),
            t,
        )?
        .stdout
        .trim()
        .to_string();
    if path.is_empty() {
        bail!("package {} installs no {name} binary", fetched.nevra);
    }
    usable(guest, spec, path, image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn query_lines_skip_blank_ones() {
        assert_eq!(
            query_lines("crun-1.21-1.fc43.x86_64\n\ncrun-1.24-1.fc43.x86_64\n\n"),
            vec!["crun-1.21-1.fc43.x86_64", "crun-1.24-1.fc43.x86_64"]
        );
        assert!(query_lines("\n\n").is_empty());
    }

    #[rstest]
    #[case("/tmp/a.rpm: digests signatures OK\n", true)]
    #[case("/tmp/a.rpm: digests OK\n", false)]
    #[case("/tmp/a.rpm: digests SIGNATURES NOT OK\n", false)]
    #[case("/tmp/a.rpm: DIGESTS signatures NOT OK\n", false)]
    #[case("", false)]
    fn checksig_output(#[case] out: &str, #[case] ok: bool) {
        assert_eq!(signature_ok(out), ok);
    }

    #[rstest]
    #[case("dnf5 version 5.2.16.0\ndnf5 plugin API version 2.0\n", Flavor::Dnf5)]
    #[case("4.23.0\n  Installed: dnf-0:4.23.0-1.noarch\n", Flavor::Dnf4)]
    fn dnf_flavors(#[case] out: &str, #[case] flavor: Flavor) {
        assert_eq!(Flavor::from_version(out), flavor);
    }

    #[test]
    fn local_installs_use_each_flavors_options() {
        assert_eq!(
            Flavor::Dnf4.install_local("/d/*.rpm"),
            "dnf -q -y --disablerepo='*' --nogpgcheck --setopt=install_weak_deps=False install /d/*.rpm"
        );
        assert_eq!(
            Flavor::Dnf5.install_local("/d/*.rpm"),
            "dnf -q -y --disable-repo='*' --no-gpgchecks --setopt=install_weak_deps=False install /d/*.rpm"
        );
    }

    #[test]
    fn only_versions_are_fetched() {
        let spec: RuntimeSpec = "crun@sid".parse().unwrap();
        let e = version_of(&spec).unwrap_err().to_string();
        assert!(e.contains("crun@sid names no version"), "{e}");
    }
}
