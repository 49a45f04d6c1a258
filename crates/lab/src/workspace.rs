//! Where the lab's files are: found at run time, never compiled in. A binary built in
//! one checkout and run in another (a copied `target/`, a restored CI cache, two
//! worktrees sharing one target directory) must read the checkout it runs in, and cargo
//! does not rebuild for a moved path.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The variable through which xtask hands its workspace to the harness.
pub const WORKSPACE_VAR: &str = "SAL_WORKSPACE";

/// The workspace that holds `start`: the nearest directory, from `start` up, whose
/// `Cargo.toml` declares a `[workspace]` and which has the catalogue
/// (`tests/scenarios`) and the targets (`vm/`).
pub fn find_root(start: &Path) -> Result<PathBuf> {
    for dir in start.ancestors() {
        let manifest = dir.join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        if !text.lines().any(|l| l.trim() == "[workspace]") {
            continue;
        }
        if dir.join("tests/scenarios").is_dir() && dir.join("vm").is_dir() {
            return Ok(dir.to_path_buf());
        }
        bail!(
            "{} is a Cargo workspace but not socket-activation-lab's (no tests/scenarios or vm/ beside it)",
            manifest.display()
        );
    }
    bail!(
        "{} is not inside a socket-activation-lab checkout (no Cargo.toml with [workspace] above it); run from the checkout",
        start.display()
    )
}

/// The workspace of this run: `SAL_WORKSPACE` when xtask set it, else the one that holds
/// the current directory (cargo runs tests from their package's directory).
pub fn current() -> Result<PathBuf> {
    match std::env::var_os(WORKSPACE_VAR) {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            find_root(&dir).and_then(|root| {
                if root == dir {
                    Ok(root)
                } else {
                    bail!(
                        "{WORKSPACE_VAR}={} is not the workspace's root ({} is)",
                        dir.display(),
                        root.display()
                    )
                }
            })
        }
        _ => find_root(&std::env::current_dir()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout(dir: &Path) {
        std::fs::create_dir_all(dir.join("tests/scenarios")).unwrap();
        std::fs::create_dir_all(dir.join("vm")).unwrap();
        std::fs::write(dir.join("Cargo.toml"), "[workspace]\nmembers = []\n").unwrap();
        std::fs::write(
            dir.join("tests/Cargo.toml"),
            "[package]\nname = \"tests\"\n",
        )
        .unwrap();
    }

    #[test]
    fn the_root_is_the_checkout_that_holds_the_directory() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        checkout(a.path());
        checkout(b.path());
        assert_eq!(find_root(&a.path().join("tests")).unwrap(), a.path());
        assert_eq!(
            find_root(&b.path().join("tests/scenarios")).unwrap(),
            b.path()
        );
        assert_eq!(find_root(b.path()).unwrap(), b.path());
    }

    #[test]
    fn another_workspace_or_none_is_named() {
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("Cargo.toml"), "[workspace]\n").unwrap();
        let e = find_root(other.path()).unwrap_err().to_string();
        assert!(e.contains("not socket-activation-lab's"), "{e}");
        let none = tempfile::tempdir().unwrap();
        let e = find_root(none.path()).unwrap_err().to_string();
        assert!(
            e.contains("not inside a socket-activation-lab checkout"),
            "{e}"
        );
    }

    #[test]
    fn this_checkout_is_found_from_its_own_directory() {
        // cargo runs this test in crates/lab.
        let root = find_root(&std::env::current_dir().unwrap()).unwrap();
        assert!(root.join("crates/lab/src/workspace.rs").is_file());
    }
}
