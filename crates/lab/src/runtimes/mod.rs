//! The runtime axis: `NAME` is the target's own runc or crun; `NAME@SUITE` is the package
//! of another Debian suite, fetched from the archive (InRelease signature checked with
//! gpgv, Packages.xz and the .deb checked against the signed SHA-256s), cached, and put
//! into the guest beside the target's own, then passed to podman as `--runtime PATH`;
//! `NAME@VERSION` is that version from a Fedora target's own repositories, installed with
//! dnf ([`dnf`]); `NAME@path:FILE` is a binary on the host ([`local`]); `NAME@git:DIR#REV`
//! is a revision of a git checkout built in a build root of the target's suite
//! ([`build`]). [`install`] puts each into the guest. The version actually run is read
//! from the binary in the guest, never assumed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Result, bail};
use vm::target::Target;

pub mod archive;
pub mod build;
pub mod dnf;
pub mod install;
pub mod local;

pub use vm::target::RUNTIMES;
pub const SUITES: [&str; 5] = ["bullseye", "bookworm", "trixie", "forky", "sid"];
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
    /// A binary on the host (`path:FILE`), copied into each trial's guest.
    Path(PathBuf),
    /// A git checkout built at a revision (`git:DIR#REV`) in a build root of the target's
    /// Debian suite; without `#REV`, its HEAD with the uncommitted changes, if any.
    Git { dir: PathBuf, rev: Option<String> },
}

/// The prefixes of the origins given as host paths: no suite or version starts so.
pub const PATH_PREFIX: &str = "path:";
pub const GIT_PREFIX: &str = "git:";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuntimeSpec {
    pub name: String,
    pub origin: Origin,
}

impl RuntimeSpec {
    /// The same runtime with its host paths made absolute against `cwd`, so that the
    /// harness (another process, another directory) finds them; other origins unchanged.
    /// A leading `~/` is the home directory: the shell does not expand it inside
    /// `crun@git:~/src/crun`.
    pub fn absolute(&self, cwd: &Path) -> RuntimeSpec {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let abs = |p: &Path| match (p.strip_prefix("~"), &home) {
            (Ok(rest), Some(home)) => home.join(rest),
            _ if p.is_absolute() => p.to_path_buf(),
            _ => cwd.join(p),
        };
        let origin = match &self.origin {
            Origin::Path(p) => Origin::Path(abs(p)),
            Origin::Git { dir, rev } => Origin::Git {
                dir: abs(dir),
                rev: rev.clone(),
            },
            o => o.clone(),
        };
        RuntimeSpec {
            name: self.name.clone(),
            origin,
        }
    }

    pub fn suite(&self) -> Option<&str> {
        match &self.origin {
            Origin::Suite(s) => Some(s),
            _ => None,
        }
    }

    /// Why this runtime cannot be used on `target` (a Debian suite's package on Fedora,
    /// a dnf version on Debian, a runtime the target does not have); `None` if it can.
    pub fn refusal(&self, target: &Target) -> Option<String> {
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
            Origin::Git { .. } if !target.is_debian() => Some(format!(
                "runtime {self}: a source tree is built in a Debian build root of the target's suite; {} is not a Debian target (build it yourself and give the binary as {}@path:FILE)",
                target.name, self.name
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

/// The origin after `NAME@` that names a host path: `path:FILE` or `git:DIR[#REV]`;
/// `None` for any other spelling. `full` is the whole spelling, for errors.
fn host_origin(full: &str, name: &str, at: &str) -> Option<Result<Origin>> {
    if let Some(file) = at.strip_prefix(PATH_PREFIX) {
        return Some(if file.is_empty() {
            Err(anyhow::anyhow!(
                "{full:?}: {PATH_PREFIX} needs the binary's path ({name}@{PATH_PREFIX}./build/{name})"
            ))
        } else {
            Ok(Origin::Path(file.into()))
        });
    }
    let rest = at.strip_prefix(GIT_PREFIX)?;
    let (dir, rev) = match rest.rsplit_once('#') {
        Some((d, "")) => {
            return Some(Err(anyhow::anyhow!(
                "{full:?}: nothing after '#': name a revision ({name}@{GIT_PREFIX}{d}#v1.2) or leave '#' out for HEAD with the uncommitted changes"
            )));
        }
        Some((d, r)) => (d, Some(r.to_string())),
        None => (rest, None),
    };
    Some(if dir.is_empty() {
        Err(anyhow::anyhow!(
            "{full:?}: {GIT_PREFIX} needs the checkout's directory ({name}@{GIT_PREFIX}~/src/{name}#REV)"
        ))
    } else {
        Ok(Origin::Git {
            dir: dir.into(),
            rev,
        })
    })
}

impl RuntimeSpec {
    /// The conmon a run uses instead of the guest's: `path:FILE` or `git:DIR#REV`.
    pub fn conmon(s: &str) -> Result<RuntimeSpec> {
        let full = format!("conmon@{s}");
        match host_origin(&full, "conmon", s) {
            Some(origin) => Ok(RuntimeSpec {
                name: "conmon".into(),
                origin: origin.map_err(|e| anyhow::anyhow!("conmon {e}"))?,
            }),
            None => bail!(
                "conmon {s:?}: expected {PATH_PREFIX}FILE (a binary on this host) or {GIT_PREFIX}DIR#REV (a revision of a checkout, built by the lab)"
            ),
        }
    }
}

impl FromStr for RuntimeSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (name, at) = match s.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        if !RUNTIMES.contains(&name) {
            bail!(
                "runtime {s:?}: expected runc or crun, optionally @SUITE, @VERSION, @{PATH_PREFIX}FILE or @{GIT_PREFIX}DIR#REV"
            );
        }
        let origin = match at {
            None => Origin::Target,
            Some(v) => match host_origin(s, name, v) {
                Some(origin) => origin.map_err(|e| anyhow::anyhow!("runtime {e}"))?,
                None if SUITES.contains(&v) => Origin::Suite(v.into()),
                None if is_rpm_version(v) => Origin::Version(v.into()),
                None => bail!(
                    "runtime {s:?}: {v:?} is neither a Debian suite ({}) nor a package version (like 1.21 or 1.21-1.fc43)",
                    SUITES.join(", ")
                ),
            },
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
            Origin::Path(p) => write!(f, "{}@{PATH_PREFIX}{}", self.name, p.display()),
            Origin::Git { dir, rev: None } => {
                write!(f, "{}@{GIT_PREFIX}{}", self.name, dir.display())
            }
            Origin::Git { dir, rev: Some(r) } => {
                write!(f, "{}@{GIT_PREFIX}{}#{r}", self.name, dir.display())
            }
        }
    }
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
    #[case("crun@path:./build/crun", "crun", Origin::Path("./build/crun".into()))]
    #[case("crun@path:1.21", "crun", Origin::Path("1.21".into()))]
    #[case("runc@git:/src/runc#v1.1.3", "runc", Origin::Git { dir: "/src/runc".into(), rev: Some("v1.1.3".into()) })]
    #[case("crun@git:../crun", "crun", Origin::Git { dir: "../crun".into(), rev: None })]
    #[case("crun@git:/a#b#HEAD~2", "crun", Origin::Git { dir: "/a#b".into(), rev: Some("HEAD~2".into()) })]
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
    #[case("crun@path:", "needs the binary's path")]
    #[case("crun@git:#v1", "needs the checkout's directory")]
    #[case("crun@git:/src/crun#", "nothing after '#'")]
    #[case("crun@./build/crun", "neither a Debian suite")]
    fn bad_specs(#[case] text: &str, #[case] msg: &str) {
        let e = text.parse::<RuntimeSpec>().unwrap_err().to_string();
        assert!(e.contains(msg) && e.contains(text), "{e}");
    }

    #[test]
    fn conmon_comes_from_a_host_path_or_a_checkout() {
        let c = RuntimeSpec::conmon("path:./bin/conmon").unwrap();
        assert_eq!(c.origin, Origin::Path("./bin/conmon".into()));
        assert_eq!(c.to_string(), "conmon@path:./bin/conmon");
        let c = RuntimeSpec::conmon("git:/src/conmon#v2.1.12").unwrap();
        assert_eq!(
            c.origin,
            Origin::Git {
                dir: "/src/conmon".into(),
                rev: Some("v2.1.12".into())
            }
        );
        let e = RuntimeSpec::conmon("trixie").unwrap_err().to_string();
        assert!(e.contains("\"trixie\"") && e.contains("path:FILE"), "{e}");
        let e = RuntimeSpec::conmon("path:").unwrap_err().to_string();
        assert!(e.contains("needs the binary's path"), "{e}");
    }

    #[test]
    fn host_paths_become_absolute() {
        let cwd = Path::new("/home/me");
        let s: RuntimeSpec = "crun@path:build/crun".parse().unwrap();
        assert_eq!(s.absolute(cwd).to_string(), "crun@path:/home/me/build/crun");
        let s: RuntimeSpec = "crun@git:../crun#1.21".parse().unwrap();
        assert_eq!(
            s.absolute(cwd).to_string(),
            "crun@git:/home/me/../crun#1.21"
        );
        let s: RuntimeSpec = "crun@git:/abs#1.21".parse().unwrap();
        assert_eq!(s.absolute(cwd).to_string(), "crun@git:/abs#1.21");
        let s: RuntimeSpec = "runc@sid".parse().unwrap();
        assert_eq!(s.absolute(cwd), s);
        let home = std::env::var("HOME").unwrap();
        let s: RuntimeSpec = "crun@git:~/src/crun#1.21".parse().unwrap();
        assert_eq!(
            s.absolute(cwd).to_string(),
            format!("crun@git:{home}/src/crun#1.21")
        );
    }

    fn vm_target(name: &str) -> Target {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vm");
        vm::target::find(&dir, name).unwrap()
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
    #[case("debian-13", "crun@path:/x/crun", None)]
    #[case("fedora-43", "crun@path:/x/crun", None)]
    #[case("debian-12", "runc@git:/x/runc#v1.1.3", None)]
    #[case(
        "fedora-43",
        "crun@git:/x/crun#1.21",
        Some(
            "a source tree is built in a Debian build root of the target's suite; fedora-43 is not"
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
        vm::config::use_test_defaults();
        let spec: RuntimeSpec = runtime.parse().unwrap();
        let why = spec.refusal(&vm_target(target));
        match refused {
            None => assert_eq!(why, None),
            Some(m) => assert!(why.as_deref().unwrap_or_default().contains(m), "{why:?}"),
        }
    }
}
