//! The runtime axis: `NAME` is the target's own runc or crun; `NAME@SUITE` is the package
//! of another Debian suite, fetched from the archive (InRelease signature checked with
//! gpgv, Packages.xz and the .deb checked against the signed SHA-256s), cached, and put
//! into the guest beside the target's own, then passed to podman as `--runtime PATH`;
//! `NAME@VERSION` is that version from a Fedora target's own repositories, installed with
//! dnf (see [`crate::dnf`]). The version actually run is read from the binary in the
//! guest, never assumed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cache;
use crate::events::Events;
use crate::fedora::{download_verified, fetch_text};
use crate::guest::Guest;
use crate::proc;

pub const RUNTIMES: [&str; 2] = ["runc", "crun"];
pub const SUITES: [&str; 5] = ["bullseye", "bookworm", "trixie", "forky", "sid"];
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Where a runtime's package comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// The target's own package.
    Target,
    /// The package of another Debian suite (Debian targets).
    Suite(String),
    /// A version (`1.21` or a whole `1.21-1.fc43`) from the target's repositories,
    /// installed with dnf (Fedora targets).
    Version(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuntimeSpec {
    pub name: String,
    pub origin: Origin,
}

impl RuntimeSpec {
    pub fn suite(&self) -> Option<&str> {
        match &self.origin {
            Origin::Suite(s) => Some(s),
            _ => None,
        }
    }

    /// Why this runtime cannot be used on `target` (a Debian suite's package on Fedora,
    /// a dnf version on Debian, a runtime the target does not have); `None` if it can.
    pub fn refusal(&self, target: &crate::target::Target) -> Option<String> {
        if !target.runtimes.contains(&self.name) {
            return Some(format!(
                "target {} has no runtime {:?}; it has {}",
                target.name,
                self.name,
                target.runtimes.join(", ")
            ));
        }
        match &self.origin {
            Origin::Suite(_) if !target.is_debian() => Some(format!(
                "runtime {self}: packages of Debian suites go only into Debian targets, not {}; name a version (like {}@1.21) to install it with dnf",
                target.name, self.name
            )),
            Origin::Version(_) if target.is_debian() => Some(format!(
                "runtime {self}: versions are installed with dnf on Fedora targets; on {} name a Debian suite ({})",
                target.name,
                SUITES.join(", ")
            )),
            _ => None,
        }
    }
}

/// An RPM [epoch:]version[-release]: starts with a digit, then what RPM allows.
fn is_rpm_version(v: &str) -> bool {
    v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~^_-:".contains(c))
}

impl FromStr for RuntimeSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (name, at) = match s.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        if !RUNTIMES.contains(&name) {
            bail!("runtime {s:?}: expected runc or crun, optionally @SUITE or @VERSION");
        }
        let origin = match at {
            None => Origin::Target,
            Some(v) if SUITES.contains(&v) => Origin::Suite(v.into()),
            Some(v) if is_rpm_version(v) => Origin::Version(v.into()),
            Some(v) => bail!(
                "runtime {s:?}: {v:?} is neither a Debian suite ({}) nor a package version (like 1.21 or 1.21-1.fc43)",
                SUITES.join(", ")
            ),
        };
        Ok(RuntimeSpec {
            name: name.into(),
            origin,
        })
    }
}

impl fmt::Display for RuntimeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Target => f.write_str(&self.name),
            Origin::Suite(v) | Origin::Version(v) => write!(f, "{}@{v}", self.name),
        }
    }
}

/// Refuses an InRelease past its `Valid-Until` (sid and testing carry one; a frozen mirror
/// serves an expired one), unless `SAL_ALLOW_EXPIRED_RELEASE=1`: the same rule
/// mmdebstrap applies to the guests' own packages.
pub fn check_valid_until(inrelease: &str, now: std::time::SystemTime) -> Result<()> {
    let Some(value) = inrelease
        .lines()
        .take_while(|l| !l.starts_with("-----BEGIN PGP SIGNATURE"))
        .find_map(|l| l.strip_prefix("Valid-Until:"))
    else {
        return Ok(());
    };
    // httpdate reads RFC 1123 dates in GMT; Debian writes UTC.
    let text = value.trim().replace(" UTC", " GMT");
    let until = httpdate::parse_http_date(&text)
        .with_context(|| format!("unreadable Valid-Until: {}", value.trim()))?;
    if until < now && !crate::image::allow_expired_release() {
        let days = now.duration_since(until).unwrap_or_default().as_secs() / 86400;
        bail!(
            "the InRelease expired {days} days ago (Valid-Until: {}); a frozen mirror or snapshot? Set {}=1 to accept it (its signature is still checked)",
            value.trim(),
            crate::image::ALLOW_EXPIRED_RELEASE
        );
    }
    Ok(())
}

/// One stanza of a Packages index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub filename: String,
    pub sha256: String,
    pub depends: Vec<String>,
}

/// Parses a Packages index (only the fields used here).
pub fn parse_packages(text: &str) -> BTreeMap<String, Package> {
    let mut out = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for line in stanza.lines() {
            if let Some((k, v)) = line.split_once(": ")
                && !line.starts_with(' ')
            {
                fields.insert(k, v);
            }
        }
        let (Some(name), Some(version), Some(filename), Some(sha256)) = (
            fields.get("Package"),
            fields.get("Version"),
            fields.get("Filename"),
            fields.get("SHA256"),
        ) else {
            continue;
        };
        let depends = fields
            .get("Depends")
            .map(|d| {
                d.split(',')
                    .filter_map(|alt| alt.split('|').next())
                    .map(|dep| {
                        dep.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .split(':')
                            .next()
                            .unwrap_or_default()
                            .to_string()
                    })
                    .filter(|d| !d.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            name.to_string(),
            Package {
                name: name.to_string(),
                version: version.to_string(),
                filename: filename.to_string(),
                sha256: sha256.to_string(),
                depends,
            },
        );
    }
    out
}

/// The SHA-256 an InRelease file gives for `path` (e.g. `main/binary-amd64/Packages.xz`).
pub fn release_sha256(inrelease: &str, path: &str) -> Option<String> {
    let mut in_sha256 = false;
    for line in inrelease.lines() {
        if !line.starts_with(' ') {
            in_sha256 = line.starts_with("SHA256:");
            continue;
        }
        if in_sha256 {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() == 3 && parts[2] == path {
                return Some(parts[0].to_string());
            }
        }
    }
    None
}

/// A runtime package of another suite, unpacked in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub spec: RuntimeSpec,
    pub debian_version: String,
    pub binary: PathBuf,
    /// Shared libraries of the package's dependencies (not libc), for guests whose own
    /// are too old.
    pub lib_dir: PathBuf,
}

fn index(
    mirror: &str,
    suite: &str,
    dir: &Path,
    events: &Events,
) -> Result<BTreeMap<String, Package>> {
    let inrelease_url = format!("{mirror}/dists/{suite}/InRelease");
    let inrelease = fetch_text(&inrelease_url)?;
    let signed = dir.join("InRelease");
    std::fs::write(&signed, &inrelease)?;
    if Path::new(KEYRING).exists() {
        let mut c = Command::new("gpgv");
        c.arg("--keyring").arg(KEYRING).arg(&signed);
        let out = proc::run(c, None, Duration::from_secs(60))?;
        if !out.success() {
            bail!(
                "{inrelease_url}: the signature does not verify with {KEYRING}:\n{}",
                out.combined()
            );
        }
    } else {
        events.emit(crate::events::Event::Note {
            target: suite.into(),
            text: format!("{KEYRING} missing (package debian-archive-keyring): InRelease signature not checked"),
        });
    }
    check_valid_until(&inrelease, std::time::SystemTime::now())
        .with_context(|| inrelease_url.clone())?;
    let rel = "main/binary-amd64/Packages.xz";
    let sha = release_sha256(&inrelease, rel)
        .with_context(|| format!("{inrelease_url} lists no SHA256 for {rel}"))?;
    let xz = dir.join("Packages.xz");
    download_verified(
        &format!("{mirror}/dists/{suite}/{rel}"),
        &sha,
        &xz,
        events,
        suite,
    )?;
    let mut c = Command::new("xz");
    c.arg("-dc").arg(&xz);
    let text = proc::check(c, None, Duration::from_secs(120))?.stdout;
    Ok(parse_packages(&text))
}

/// Fetches (or reuses) `spec`'s package from its suite. The cache entry is keyed by the
/// suite's package version, so a newer upload is a new entry.
pub fn fetch(spec: &RuntimeSpec, mirror: &str, events: &Events) -> Result<Fetched> {
    let suite = spec
        .suite()
        .context("only NAME@SUITE runtimes are fetched from the Debian archive")?;
    let root = cache::root().join("runtimes");
    // Reuse what was fetched before; `vm clean` forgets it (and so picks up new uploads).
    let stamp = cache::Stamp::new(root.join(format!("{spec}.current")));
    if let Some((dir, m)) = stamp.entry() {
        return Ok(loaded(spec, &dir, &m));
    }
    std::fs::create_dir_all(&root)?;
    let scratch = tempfile::Builder::new()
        .prefix(".index-")
        .tempdir_in(&root)?;
    let step = events.step(suite, &format!("fetching {spec} from the Debian archive"));
    let packages = index(mirror, suite, scratch.path(), events)?;
    let pkg = packages
        .get(&spec.name)
        .with_context(|| format!("suite {suite} has no package {}", spec.name))?;
    let dir = root.join(format!(
        "{}-{suite}-{}",
        spec.name,
        pkg.version.replace([':', '~', '+'], "_")
    ));
    let _lock = cache::lock(&dir)?;
    if let Some(m) = cache::lookup_keyed(&dir, &pkg.version) {
        stamp.set(&dir)?;
        step.done();
        return Ok(loaded(spec, &dir, &m));
    }
    let stage = cache::stage(&dir, &pkg.version)?;
    let s = stage.path();
    let unpack = s.join("unpack");
    // The runtime, then the libraries it depends on (libc stays the guest's own).
    let mut wanted = vec![pkg.clone()];
    for dep in &pkg.depends {
        if dep.starts_with("lib")
            && !dep.starts_with("libc6")
            && let Some(p) = packages.get(dep)
        {
            wanted.push(p.clone());
        }
    }
    for p in &wanted {
        let deb = s.join(format!("{}.deb", p.name));
        download_verified(
            &format!("{mirror}/{}", p.filename),
            &p.sha256,
            &deb,
            events,
            suite,
        )?;
        let mut c = Command::new("dpkg-deb");
        c.arg("-x").arg(&deb).arg(&unpack);
        proc::check(c, None, Duration::from_secs(120))?;
        std::fs::remove_file(&deb)?;
    }
    let binary = ["usr/sbin", "usr/bin"]
        .iter()
        .map(|d| unpack.join(d).join(&spec.name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "package {} {} has no {} binary",
                spec.name, pkg.version, spec.name
            )
        })?;
    std::fs::rename(&binary, s.join(&spec.name))?;
    let lib_dir = s.join("lib");
    std::fs::create_dir_all(&lib_dir)?;
    let multiarch = unpack.join("usr/lib/x86_64-linux-gnu");
    for dir in [multiarch, unpack.join("lib/x86_64-linux-gnu")] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(".so") {
                // Symlinks resolve to their target's bytes: the guest gets plain files.
                std::fs::copy(e.path(), lib_dir.join(&name))?;
            }
        }
    }
    std::fs::remove_dir_all(&unpack)?;
    // The manifest lists only top-level files; pack the libraries as one tar so they are
    // covered too.
    let mut c = Command::new("tar");
    c.arg("-C")
        .arg(&lib_dir)
        .arg("-cf")
        .arg(s.join("lib.tar"))
        .arg(".");
    proc::check(c, None, Duration::from_secs(60))?;
    std::fs::remove_dir_all(&lib_dir)?;
    let facts = BTreeMap::from([("debian_version".to_string(), pkg.version.clone())]);
    let m = stage.publish(facts)?;
    stamp.set(&dir)?;
    step.done();
    Ok(loaded(spec, &dir, &m))
}

fn loaded(spec: &RuntimeSpec, dir: &Path, m: &cache::Manifest) -> Fetched {
    Fetched {
        spec: spec.clone(),
        debian_version: m.facts.get("debian_version").cloned().unwrap_or_default(),
        binary: dir.join(&spec.name),
        lib_dir: dir.join("lib.tar"),
    }
}

/// What a trial passes to podman as `--runtime`, and the version it reports.
#[derive(Debug, Clone)]
pub struct Installed {
    pub podman_arg: String,
    pub version: String,
}

/// Why a runtime cannot be used on this guest (too old for its podman, missing glibc):
/// the trial is skipped with this text. The version, when the binary could tell it.
#[derive(Debug, Clone)]
pub struct Unusable(pub String, pub Option<String>);

/// The first line of `RUNTIME --version` as a version (`runc version 1.1.15+ds1` ->
/// `1.1.15+ds1`, `crun version 1.21` -> `1.21`).
pub fn parse_version(output: &str) -> Option<String> {
    let first = output.lines().next()?;
    let v = first.split_whitespace().nth(2)?;
    Some(v.to_string())
}

/// Makes `spec` usable in the guest and checks it can run a container there.
pub fn install(
    guest: &Guest,
    spec: &RuntimeSpec,
    fetched: Option<&Fetched>,
    image: &str,
) -> Result<std::result::Result<Installed, Unusable>> {
    let t = Duration::from_secs(120);
    let podman_arg = match fetched {
        None => spec.name.clone(),
        Some(f) => {
            let dir = format!("/opt/socket-activation-lab/runtimes/{spec}");
            let real = format!("{dir}/{}.bin", spec.name);
            guest.copy_in(&f.binary, &real, 0o755)?;
            let libs = std::fs::read(&f.lib_dir)?;
            let out = guest.root_stdin(
                &format!("mkdir -p {dir}/lib && tar -C {dir}/lib -xf -"),
                Some(&libs),
                t,
            )?;
            if !out.success() {
                bail!(
                    "unpacking {spec}'s libraries in the guest: {}",
                    out.combined()
                );
            }
            // Use the guest's libraries when they satisfy the binary; the suite's own
            // otherwise (a newer crun may need newer libyajl or libseccomp).
            let ldd = guest.root(&format!("ldd {real} 2>&1"), t)?.combined();
            let glibc_missing = ldd
                .lines()
                .find(|l| l.contains("GLIBC_") && l.contains("not found"));
            if let Some(line) = glibc_missing {
                let why = format!(
                    "{spec} needs a newer glibc than the guest's: {}",
                    line.trim()
                );
                return Ok(Err(Unusable(why, None)));
            }
            let path = format!("{dir}/{}", spec.name);
            // When the guest's libraries do, the binary itself is the runtime (runc
            // re-executes /proc/self/exe); otherwise a wrapper adds the suite's libraries.
            if ldd.contains("not found") {
                let wrapper = format!("#!/bin/sh\nLD_LIBRARY_PATH={dir}/lib exec {real} \"$@\"\n");
                guest.write_file(&path, wrapper.as_bytes(), None, 0o755)?;
            } else {
                guest.root_ok(&format!("ln -sf {real} {path}"), t)?;
            }
            let check = guest.root(
                &format!("LD_LIBRARY_PATH={dir}/lib ldd {real} 2>&1 | grep 'not found' || true"),
                t,
            )?;
            if !check.stdout.trim().is_empty() {
                let why = format!(
                    "{spec}: libraries not found even with the suite's own: {}",
                    check.stdout.trim()
                );
                return Ok(Err(Unusable(why, None)));
            }
            path
        }
    };
    usable(guest, spec, podman_arg, image)
}

/// Reads the version of the runtime at `podman_arg` and checks that podman can run a
/// container with it.
pub fn usable(
    guest: &Guest,
    spec: &RuntimeSpec,
    podman_arg: String,
    image: &str,
) -> Result<std::result::Result<Installed, Unusable>> {
    let t = Duration::from_secs(120);
    let out = guest.root(&format!("{podman_arg} --version"), t)?;
    let version = parse_version(&out.stdout)
        .with_context(|| format!("`{podman_arg} --version` printed {:?}", out.combined()))?;
    // A trivial container proves podman and this runtime get along (crun 0.17 refuses
    // podman 5's config with `unknown version specified`).
    let probe = guest.user(&format!("podman run --rm --network=none --pull=never --runtime {podman_arg} --entrypoint /echo-probe {image} --version"), t)?;
    if !probe.success() {
        let err = probe
            .combined()
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .trim()
            .to_string();
        let why = format!("{spec} {version} cannot run a container with this podman: {err}");
        return Ok(Err(Unusable(why, Some(version))));
    }
    Ok(Ok(Installed {
        podman_arg,
        version,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("runc", "runc", Origin::Target)]
    #[case("crun@sid", "crun", Origin::Suite("sid".into()))]
    #[case("runc@bullseye", "runc", Origin::Suite("bullseye".into()))]
    #[case("crun@1.21", "crun", Origin::Version("1.21".into()))]
    #[case("runc@1.3.0-1.fc43", "runc", Origin::Version("1.3.0-1.fc43".into()))]
    #[case("runc@2:1.1~rc1^git", "runc", Origin::Version("2:1.1~rc1^git".into()))]
    fn specs(#[case] text: &str, #[case] name: &str, #[case] origin: Origin) {
        let s: RuntimeSpec = text.parse().unwrap();
        assert_eq!((s.name.as_str(), &s.origin), (name, &origin));
        assert_eq!(s.to_string(), text);
    }

    #[rstest]
    #[case("youki", "expected runc or crun")]
    #[case("runc@jessie", "\"jessie\" is neither a Debian suite")]
    #[case("crun@1.2 3", "neither a Debian suite")]
    #[case("crun@", "neither a Debian suite")]
    fn bad_specs(#[case] text: &str, #[case] msg: &str) {
        let e = text.parse::<RuntimeSpec>().unwrap_err().to_string();
        assert!(e.contains(msg) && e.contains(text), "{e}");
    }

    fn vm_target(name: &str) -> crate::target::Target {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vm");
        crate::target::find(&dir, name).unwrap()
    }

    #[rstest]
    #[case("debian-13", "crun", None)]
    #[case("debian-13", "runc@bookworm", None)]
    #[case("fedora-43", "crun@1.21", None)]
    #[case("fedora-43", "crun@1.21-1.fc43", None)]
    #[case(
        "fedora-43",
        "crun@sid",
        Some(
            "packages of Debian suites go only into Debian targets, not fedora-43; name a version (like crun@1.21)"
        )
    )]
    #[case(
        "debian-13",
        "runc@1.1.15",
        Some(
            "versions are installed with dnf on Fedora targets; on debian-13 name a Debian suite"
        )
    )]
    fn where_runtimes_can_go(
        #[case] target: &str,
        #[case] runtime: &str,
        #[case] refused: Option<&str>,
    ) {
        let spec: RuntimeSpec = runtime.parse().unwrap();
        let why = spec.refusal(&vm_target(target));
        match refused {
            None => assert_eq!(why, None),
            Some(m) => assert!(why.as_deref().unwrap_or_default().contains(m), "{why:?}"),
        }
    }

    #[test]
    fn packages_index() {
        let text = "Package: crun\nVersion: 1.8.1-1+deb12u1\nDepends: libc6 (>= 2.34), libcap2 (>= 1:2.10), libseccomp2 (>= 2.5.0), libsystemd0, libyajl2 (>= 2.0.4)\nFilename: pool/main/c/crun/crun_1.8.1-1+deb12u1_amd64.deb\nSHA256: abc\nDescription: lightweight OCI runtime\n continued line: ignored\n\nPackage: runc\nVersion: 1.1.5+ds1-1+deb12u1\nDepends: libc6 (>= 2.34), libseccomp2 (>= 2.5.0) | libfoo\nFilename: pool/main/r/runc/runc.deb\nSHA256: def\n";
        let p = parse_packages(text);
        assert_eq!(
            p["crun"].depends,
            vec!["libc6", "libcap2", "libseccomp2", "libsystemd0", "libyajl2"]
        );
        assert_eq!(p["runc"].version, "1.1.5+ds1-1+deb12u1");
        assert_eq!(p["runc"].depends, vec!["libc6", "libseccomp2"]);
        assert_eq!(
            p["crun"].filename,
            "pool/main/c/crun/crun_1.8.1-1+deb12u1_amd64.deb"
        );
    }

    #[test]
    fn inrelease_valid_until() {
        let t = |s: &str| httpdate::parse_http_date(s).unwrap();
        let sid = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\nDate: Fri, 30 Oct 2026 08:08:01 UTC\nValid-Until: Fri, 06 Nov 2026 08:08:01 UTC\n\n-----BEGIN PGP SIGNATURE-----\n";
        check_valid_until(sid, t("Thu, 05 Nov 2026 00:00:00 GMT")).unwrap();
        let e = check_valid_until(sid, t("Mon, 23 Nov 2026 12:00:00 GMT"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expired 17 days ago (Valid-Until: Fri, 06 Nov 2026 08:08:01 UTC)")
                && e.contains("SAL_ALLOW_EXPIRED_RELEASE=1"),
            "{e}"
        );
        // Stable suites have no Valid-Until.
        let bookworm = "Origin: Debian\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n";
        check_valid_until(bookworm, t("Mon, 23 Nov 2026 12:00:00 GMT")).unwrap();
        let bad = "Valid-Until: tomorrow\n";
        assert!(check_valid_until(bad, t("Mon, 23 Nov 2026 12:00:00 GMT")).is_err());
    }

    #[test]
    fn inrelease_sha256_section() {
        let text = "Origin: Debian\nMD5Sum:\n aaaa 10 main/binary-amd64/Packages.xz\nSHA256:\n 1111 5 main/binary-amd64/Packages\n 2222 10 main/binary-amd64/Packages.xz\n";
        assert_eq!(
            release_sha256(text, "main/binary-amd64/Packages.xz").as_deref(),
            Some("2222")
        );
        assert_eq!(release_sha256(text, "main/binary-arm64/Packages.xz"), None);
    }

    #[rstest]
    #[case("runc version 1.1.15+ds1\ncommit: v1.1.15\nspec: 1.2.0", "1.1.15+ds1")]
    #[case("crun version 1.21\ncommit: abc\n", "1.21")]
    #[case("runc version 1.0.0~rc93+ds1\n", "1.0.0~rc93+ds1")]
    fn versions(#[case] out: &str, #[case] v: &str) {
        assert_eq!(parse_version(out).unwrap(), v);
    }
}
