//! The runtime axis: `NAME` is the target's own runc or crun; `NAME@SUITE` is the package
//! of another Debian suite, fetched from the archive (InRelease signature checked with
//! gpgv, Packages.xz and the .deb checked against the signed SHA-256s), cached, and put
//! into the guest beside the target's own, then passed to podman as `--runtime PATH`;
//! `NAME@VERSION` is that version from a Fedora target's own repositories, installed with
//! dnf ([`dnf`]); [`install`] puts either into the guest. The version actually run is read from the binary in the
//! guest, never assumed.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use vm::target::Target;

pub mod archive;
pub mod dnf;
pub mod install;

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
}
