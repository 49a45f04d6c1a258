//! `cargo xtask` runs cargo itself. What that inner cargo builds must be what a plain
//! `cargo` in the workspace builds, or each of them rebuilds what the other built
//! (ring's C code included) on every call.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// cargo as a user's shell runs it: without the variables `cargo test` set for this test.
fn plain_cargo(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(workspace()).args(args);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR" {
            c.env_remove(&*name);
        }
    }
    c
}

/// The packages `cargo build -p xtask` compiled again (its JSON messages with
/// `"fresh": false`).
fn rebuilt_by_plain_build() -> Vec<String> {
    let out = plain_cargo(&["build", "--locked", "-p", "xtask", "--message-format=json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo build -p xtask failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["fresh"] == false)
        .map(|m| m["package_id"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn cargo_xtask_leaves_what_plain_cargo_built_fresh() {
    // Whatever this test's own build left stale is rebuilt here, before the check.
    rebuilt_by_plain_build();
    // `test --list` runs `cargo test --no-run` for the matrix harness, and no guest.
    let list = plain_cargo(&["xtask", "test", "--list", "--target", "debian-13"])
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "cargo xtask test --list failed: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    let rebuilt = rebuilt_by_plain_build();
    assert!(
        rebuilt.is_empty(),
        "after `cargo xtask test --list`, `cargo build -p xtask` compiled again: {rebuilt:?}"
    );
}
