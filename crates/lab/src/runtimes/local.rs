//! A runtime binary from the host (`NAME@path:FILE`, or one [`super::build`] made): checked
//! on the host (it exists, is executable, is for the guests' architecture), copied into
//! the trial's guest, and run there once before the first step, so a binary that cannot
//! run is a FAIL with the loader's own words and what the guest has.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vm::guest::Guest;
use vm::proc::quote;

use crate::runtimes::RuntimeSpec;

/// Where a runtime given as a host binary came from, for the reports.
#[derive(Debug, Clone)]
pub struct HostBinary {
    pub path: PathBuf,
    /// One line: the file, and `git describe --dirty` of the tree it lives in, if any.
    pub provenance: String,
    /// The tree's uncommitted changes, when it is dirty.
    pub diff: Option<String>,
}

/// The guests' architecture, as ELF headers name it.
const GUEST_ARCH: object::Architecture = object::Architecture::X86_64;

/// Checks `path` on the host: it exists, is a file with an execute bit, and is an ELF for
/// the guests' architecture (or a script). Errors name the path.
pub fn inspect(path: &Path) -> Result<HostBinary> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{} does not exist or cannot be read", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", path.display());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        bail!(
            "{} is not executable (mode {:o}); chmod +x it",
            path.display(),
            meta.permissions().mode() & 0o7777
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if let Some(why) = foreign_architecture(&bytes) {
        bail!("{} {why}; the lab's guests are x86_64", path.display());
    }
    let path = std::fs::canonicalize(path)?;
    let (provenance, diff) = match git_tree_of(&path) {
        Some((top, describe, diff)) => (
            format!(
                "binary {} from the git tree {} at {describe}{}",
                path.display(),
                top.display(),
                if diff.is_some() {
                    " (with uncommitted changes: source-NAME.diff in the trial)"
                } else {
                    ""
                }
            ),
            diff,
        ),
        None => (format!("binary {}", path.display()), None),
    };
    Ok(HostBinary {
        path,
        provenance,
        diff,
    })
}

/// Why `bytes` cannot run on the guests: an ELF for another architecture, or no
/// executable at all. A script (`#!`) is left to the guest.
fn foreign_architecture(bytes: &[u8]) -> Option<String> {
    use object::Object;
    if bytes.starts_with(b"#!") {
        return None;
    }
    match object::File::parse(bytes) {
        Ok(file) if file.architecture() == GUEST_ARCH => None,
        Ok(file) => Some(format!(
            "is a {:?} binary ({:?})",
            file.architecture(),
            file.format()
        )),
        Err(_) => Some("is neither an ELF executable nor a script (#!)".to_string()),
    }
}

/// The git tree `path` lives in: its top, `git describe --tags --always --dirty`, and
/// the uncommitted changes.
fn git_tree_of(path: &Path) -> Option<(PathBuf, String, Option<String>)> {
    let dir = path.parent()?;
    let git = |args: &[&str]| {
        super::build::git_out(dir, args)
            .ok()
            .filter(|o| o.success())
            .map(|o| o.stdout)
    };
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?.trim());
    let describe = git(&["describe", "--tags", "--always", "--dirty"])?
        .trim()
        .to_string();
    let diff = git(&["diff", "HEAD", "--binary"]).filter(|d| !d.is_empty());
    Some((top, describe, diff))
}

/// The guest directory for `spec`'s files: a name of its own per runtime spelling.
pub fn guest_dir(spec: &RuntimeSpec) -> String {
    let key = vm::cache::key(&[("spec", spec.to_string().as_bytes())]);
    format!("/opt/socket-activation-lab/runtimes/{}-{key}", spec.name)
}

/// Copies `binary` into the guest as `spec`'s runtime and runs its `--version` there;
/// returns the path podman gets. A binary that cannot run is an error with the loader's
/// words, its `ldd`, and the guest's architecture and glibc.
pub fn put_into_guest(guest: &Guest, spec: &RuntimeSpec, binary: &Path) -> Result<String> {
    let t = Duration::from_secs(120);
    let path = format!("{}/{}", guest_dir(spec), spec.name);
    guest.copy_in(binary, &path, 0o755)?;
    let out = guest.root(&format!("{} --version", quote(&path)), t)?;
    if out.success() {
        return Ok(path);
    }
    let facts = guest
        .root(
            &format!(
                "echo \"guest: $(uname -m), $(ldd --version 2>&1 | head -n1)\"; file_out=$(head -c4 {p} | od -An -c | tr -d ' '); echo \"first bytes: $file_out\"; ldd {p} 2>&1 | sed 's/^/ldd: /'",
                p = quote(&path)
            ),
            t,
        )?
        .combined();
    bail!(
        "{spec} cannot run in the guest: `{path} --version` exited with {}:\n{}\n{}",
        out.status,
        out.combined().trim(),
        facts.trim()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn bad_binaries_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = format!("{:#}", inspect(&missing).unwrap_err());
        assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
        let e = format!("{:#}", inspect(dir.path()).unwrap_err());
        assert!(e.contains("is not a file"), "{e}");
        let p = file(dir.path(), "noexec", b"#!/bin/sh\n", 0o644);
        let e = format!("{:#}", inspect(&p).unwrap_err());
        assert!(e.contains("noexec") && e.contains("not executable"), "{e}");
        let p = file(dir.path(), "text", b"hello", 0o755);
        let e = format!("{:#}", inspect(&p).unwrap_err());
        assert!(e.contains("neither an ELF"), "{e}");
        // An aarch64 ELF header: machine 0xb7.
        let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        elf.extend_from_slice(&[2, 0, 0xb7, 0, 1, 0, 0, 0]);
        elf.resize(64, 0);
        elf[52] = 64; // e_ehsize
        let p = file(dir.path(), "arm", &elf, 0o755);
        let e = format!("{:#}", inspect(&p).unwrap_err());
        assert!(e.contains("arm") && e.contains("Aarch64"), "{e}");
    }

    #[test]
    fn a_host_binary_and_a_script_pass() {
        let exe = std::env::current_exe().unwrap();
        let b = inspect(&exe).unwrap();
        assert!(b.provenance.contains(&exe.display().to_string()), "{b:?}");
        let dir = tempfile::tempdir().unwrap();
        let p = file(
            dir.path(),
            "wrapper",
            b"#!/bin/sh\nexec crun \"$@\"\n",
            0o755,
        );
        let b = inspect(&p).unwrap();
        assert_eq!(
            b.provenance,
            format!("binary {}", p.canonicalize().unwrap().display())
        );
    }

    #[test]
    fn a_binary_in_a_git_tree_names_its_describe_and_dirt() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let git = |args: &[&str]| {
            let ok = std::process::Command::new("git")
                .arg("-C")
                .arg(d)
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .output()
                .unwrap();
            assert!(ok.status.success(), "{ok:?}");
        };
        git(&["init", "-q"]);
        let p = file(d, "crun", b"#!/bin/sh\necho 1\n", 0o755);
        git(&["add", "crun"]);
        git(&["commit", "-qm", "one"]);
        git(&["tag", "v1"]);
        let b = inspect(&p).unwrap();
        assert!(b.provenance.contains("at v1") && b.diff.is_none(), "{b:?}");
        std::fs::write(&p, b"#!/bin/sh\necho 2\n").unwrap();
        let b = inspect(&p).unwrap();
        assert!(b.provenance.contains("at v1-dirty"), "{b:?}");
        assert!(b.diff.as_deref().unwrap().contains("+echo 2"), "{b:?}");
    }
}
