//! VM targets as data: one TOML file per target under `vm/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The OCI runtimes a target can carry (and the lab can put on its matrix axis).
pub const RUNTIMES: [&str; 2] = ["runc", "crun"];

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Must match the file name without `.toml`.
    pub name: String,
    pub description: String,
    pub source: ImageSource,
    /// Packages installed in the guest (the kernel package is added by the source); on a
    /// Debian target with their Recommends, as `apt install` does.
    pub packages: Vec<String>,
    /// Packages apt would install (a Recommends) that the lab leaves out on purpose, each
    /// with the reason (size, boot time): pinned away at the build, and the only
    /// difference the guest may have from what apt installs.
    #[serde(default)]
    pub leave_out: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub machine: Machine,
    /// OCI runtimes of the target's own suite, in matrix order.
    pub runtimes: Vec<String>,
    /// Kernel modules loaded at boot (modules-load.d).
    #[serde(default = "default_modules")]
    pub modules: Vec<String>,
    #[serde(skip)]
    pub file: PathBuf,
    /// The file's bytes, part of every cache key.
    #[serde(skip)]
    pub file_text: String,
}

fn default_modules() -> Vec<String> {
    vec!["vsock_loopback".into()]
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ImageSource {
    /// Built offline with mmdebstrap from the Debian archive.
    Debian {
        suite: String,
        /// The Debian archive: `SAL_DEBIAN_MIRROR` if set, else this key if the file has
        /// it, else the one the host's apt is configured with ([`resolve_mirror`]).
        #[serde(default)]
        mirror: String,
        /// Where `mirror` came from, for `doctor` and messages.
        #[serde(skip)]
        mirror_origin: String,
        /// The cloud kernel boots fastest.
        kernel_package: String,
    },
    /// A Fedora Cloud Base Generic qcow2, verified against its CHECKSUM file.
    Fedora {
        release: u32,
        image_url: String,
        checksum_url: String,
        /// The release key (a binary keyring, relative to the target file) that signs the
        /// CHECKSUM file (checked with gpgv where it is installed) and the release's
        /// packages (checked with rpmkeys for `NAME@VERSION` runtimes).
        #[serde(default)]
        checksum_key: Option<String>,
    },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub uid: u32,
}

impl Default for User {
    fn default() -> Self {
        User {
            name: "test".into(),
            uid: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub memory_mib: u32,
    pub cpus: u32,
    pub disk_gib: u32,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            memory_mib: 2048,
            cpus: 2,
            disk_gib: 4,
        }
    }
}

impl Target {
    /// Parses one target file. Errors name the file, and (from toml) the line, the key
    /// and what was expected.
    pub fn load(path: &Path) -> Result<Target> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading target file {}", path.display()))?;
        Target::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Target> {
        let mut target: Target =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if target.name != stem {
            bail!(
                "{}: key `name` is {:?} but the file is named {stem:?}.toml; they must match",
                path.display(),
                target.name
            );
        }
        if let ImageSource::Debian {
            mirror,
            mirror_origin,
            ..
        } = &mut target.source
        {
            let env = crate::config::get().debian_mirror.clone();
            let host = crate::apt_sources::read(Path::new("/etc/apt"));
            (*mirror, *mirror_origin) = resolve_mirror(env.as_deref(), mirror, path, &host)?;
        }
        if target.runtimes.is_empty() {
            bail!(
                "{}: key `runtimes` is empty; expected at least one of \"crun\", \"runc\"",
                path.display()
            );
        }
        for r in &target.runtimes {
            if !RUNTIMES.contains(&r.as_str()) {
                bail!(
                    "{}: key `runtimes` has {r:?}; expected \"crun\" or \"runc\"",
                    path.display()
                );
            }
        }
        if target.machine.memory_mib < 512
            || target.machine.cpus == 0
            || target.machine.disk_gib < 2
        {
            bail!(
                "{}: table `machine` needs memory_mib >= 512, cpus >= 1, disk_gib >= 2",
                path.display()
            );
        }
        if target.user.uid == 0 {
            bail!(
                "{}: key `user.uid` is 0; the test user must not be root",
                path.display()
            );
        }
        target.file = path.to_path_buf();
        target.file_text = text.to_string();
        Ok(target)
    }

    pub fn is_debian(&self) -> bool {
        matches!(self.source, ImageSource::Debian { .. })
    }

    /// The key that signs this target's packages, as a path: a Fedora release key.
    pub fn package_key(&self) -> Option<PathBuf> {
        match &self.source {
            ImageSource::Fedora {
                checksum_key: Some(key),
                ..
            } => Some(self.file.parent().unwrap_or(Path::new(".")).join(key)),
            _ => None,
        }
    }
}

/// The environment variable that names the Debian archive for every Debian target.
pub const MIRROR_ENV: &str = crate::config::DEBIAN_MIRROR_VAR;

/// The Debian archive a target's guests and runtime packages come from, and where that
/// was said: `SAL_DEBIAN_MIRROR`, then the target file's `mirror`, then the host's own
/// apt sources (so a local mirror, a proxy or a snapshot the host uses is the guests'
/// too); an error naming all three when none has one.
pub fn resolve_mirror(
    env: Option<&str>,
    in_file: &str,
    file: &Path,
    host: &[crate::apt_sources::Source],
) -> Result<(String, String)> {
    if let Some(m) = env.map(str::trim).filter(|m| !m.is_empty()) {
        return Ok((m.trim_end_matches('/').to_string(), MIRROR_ENV.to_string()));
    }
    if !in_file.trim().is_empty() {
        return Ok((
            in_file.trim().trim_end_matches('/').to_string(),
            format!("mirror in {}", file.display()),
        ));
    }
    match crate::apt_sources::debian_archive(host) {
        Some(s) => Ok((s.uri.clone(), format!("the host's apt ({})", s.file))),
        None => bail!(
            "{}: no Debian archive to build from: the host's apt names none (/etc/apt/sources.list, sources.list.d/*.list or *.sources with a Debian suite and main); set {MIRROR_ENV}=URL or `mirror = \"URL\"` under [source]",
            file.display()
        ),
    }
}

/// Every target under `dir`, sorted by name.
pub fn load_all(dir: &Path) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            targets.push(Target::load(&path)?);
        }
    }
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(targets)
}

/// The target called `name`, with the list of known names when there is none.
pub fn find(dir: &Path, name: &str) -> Result<Target> {
    let all = load_all(dir)?;
    let names: Vec<String> = all.iter().map(|t| t.name.clone()).collect();
    all.into_iter().find(|t| t.name == name).with_context(|| {
        format!(
            "no target {name:?} in {}; known: {}",
            dir.display(),
            names.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const GOOD: &str = r#"
name = "debian-13"
description = "Debian 13"
packages = ["podman"]
runtimes = ["crun", "runc"]
[source]
kind = "debian"
suite = "trixie"
mirror = "http://deb.debian.org/debian"
kernel_package = "linux-image-cloud-amd64"
"#;

    #[test]
    fn the_archive_comes_from_the_environment_the_file_or_the_hosts_apt() {
        let file = Path::new("vm/debian-13.toml");
        let host = crate::apt_sources::parse_list(
            "deb http://proxy.local:3142/debian bookworm main\n",
            "/etc/apt/sources.list",
        );
        let r = |env: Option<&str>, in_file: &str, host: &[crate::apt_sources::Source]| {
            resolve_mirror(env, in_file, file, host).unwrap()
        };
        assert_eq!(
            r(Some("http://snap.local/debian/"), "http://f/debian", &host),
            ("http://snap.local/debian".into(), MIRROR_ENV.into())
        );
        assert_eq!(
            r(Some(" "), "http://f/debian", &host).1,
            "mirror in vm/debian-13.toml"
        );
        assert_eq!(
            r(None, "", &host),
            (
                "http://proxy.local:3142/debian".into(),
                "the host's apt (/etc/apt/sources.list)".into()
            )
        );
        let e = format!("{:#}", resolve_mirror(None, "", file, &[]).unwrap_err());
        assert!(
            e.contains("vm/debian-13.toml") && e.contains(MIRROR_ENV) && e.contains("sources.list"),
            "{e}"
        );
    }

    #[test]
    fn parses_a_debian_target() {
        crate::config::use_test_defaults();
        let t = Target::parse(GOOD, Path::new("vm/debian-13.toml")).unwrap();
        assert_eq!(t.user, User::default());
        assert_eq!(t.machine, Machine::default());
        assert!(t.is_debian());
        assert_eq!(t.modules, vec!["vsock_loopback"]);
    }

    #[rstest]
    #[case::name_mismatch(
        GOOD,
        "vm/debian-12.toml",
        "key `name` is \"debian-13\" but the file is named \"debian-12\".toml"
    )]
    #[case::unknown_key(&GOOD.replace("packages", "pakages"), "vm/debian-13.toml", "unknown field `pakages`")]
    #[case::wrong_type(&GOOD.replace(r#"packages = ["podman"]"#, "packages = \"podman\""), "vm/debian-13.toml", "invalid type: string \"podman\", expected a sequence")]
    #[case::unknown_kind(&GOOD.replace(r#"kind = "debian""#, r#"kind = "arch""#), "vm/debian-13.toml", "unknown variant `arch`, expected `debian` or `fedora`")]
    #[case::bad_runtime(&GOOD.replace(r#"["crun", "runc"]"#, r#"["youki"]"#), "vm/debian-13.toml", "key `runtimes` has \"youki\"")]
    #[case::missing(&GOOD.replace("description = \"Debian 13\"\n", ""), "vm/debian-13.toml", "missing field `description`")]
    fn bad_files_name_the_file_and_key(
        #[case] text: &str,
        #[case] path: &str,
        #[case] message: &str,
    ) {
        crate::config::use_test_defaults();
        let e = format!("{:#}", Target::parse(text, Path::new(path)).unwrap_err());
        assert!(e.contains(path), "{e}");
        assert!(e.contains(message), "{e}");
    }

    #[test]
    fn the_shipped_targets_parse() {
        crate::config::use_test_defaults();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vm");
        let all = load_all(&dir).unwrap();
        let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
        for n in [
            "debian-12",
            "debian-13",
            "debian-sid",
            "fedora-43",
            "fedora-44",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
    }
}
