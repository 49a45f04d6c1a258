//! Runtime packages of another Debian suite (`NAME@SUITE`): the suite's InRelease
//! (signature checked with gpgv, `Valid-Until` honoured), its Packages.xz and the .debs
//! checked against the signed SHA-256s, unpacked into the cache with the libraries they
//! depend on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vm::cache;
use vm::download::{download_verified, fetch_text, verify_clearsigned};
use vm::proc;

use crate::events::Events;
use crate::runtimes::RuntimeSpec;

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

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
    if until < now && !vm::debian::allow_expired_release() {
        let days = now.duration_since(until).unwrap_or_default().as_secs() / 86400;
        bail!(
            "the InRelease expired {days} days ago (Valid-Until: {}); a frozen mirror or snapshot? Set {}=1 to accept it (its signature is still checked)",
            value.trim(),
            vm::config::ALLOW_EXPIRED_RELEASE_VAR
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
pub struct SuitePackage {
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
    std::fs::write(dir.join("InRelease"), &inrelease)?;
    if Path::new(KEYRING).exists() {
        verify_clearsigned(&inrelease, Path::new(KEYRING))
            .with_context(|| inrelease_url.clone())?;
    } else {
        events.note(
            suite,
            format!("{KEYRING} missing (package debian-archive-keyring): InRelease signature not checked"),
        );
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
        events.machine(),
        suite,
    )?;
    let mut c = Command::new("xz");
    c.arg("-dc").arg(&xz);
    let text = proc::check(c, None, Duration::from_secs(120))?.stdout;
    Ok(parse_packages(&text))
}

/// Fetches (or reuses) `spec`'s package from its suite. The cache entry is keyed by the
/// suite's package version, so a newer upload is a new entry.
pub fn fetch_package(spec: &RuntimeSpec, mirror: &str, events: &Events) -> Result<SuitePackage> {
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
            events.machine(),
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

fn loaded(spec: &RuntimeSpec, dir: &Path, m: &cache::Manifest) -> SuitePackage {
    SuitePackage {
        spec: spec.clone(),
        debian_version: m.facts.get("debian_version").cloned().unwrap_or_default(),
        binary: dir.join(&spec.name),
        lib_dir: dir.join("lib.tar"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        vm::config::use_test_defaults();
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
}
