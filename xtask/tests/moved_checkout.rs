//! A binary built in one checkout and run in another reads the checkout it runs in: the
//! workspace is found at run time. A copied `target/`, a restored CI cache or two
//! worktrees sharing a target directory all run binaries built elsewhere, and cargo does
//! not rebuild them for a moved path.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// What the harness and xtask read of a checkout, copied, with one scenario and one
/// target fewer and a scenario of the copy's own.
fn other_checkout() -> tempfile::TempDir {
    let ws = workspace();
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(ws.join("Cargo.toml"), copy.path().join("Cargo.toml")).unwrap();
    for dir in ["tests/scenarios", "tests/mutants", "vm"] {
        copy_tree(&ws.join(dir), &copy.path().join(dir));
    }
    std::fs::copy(
        ws.join("tests/Cargo.toml"),
        copy.path().join("tests/Cargo.toml"),
    )
    .unwrap();
    std::fs::remove_file(copy.path().join("tests/scenarios/trigger-limit.toml")).unwrap();
    std::fs::copy(
        ws.join("tests/scenarios/echo-tcp4.toml"),
        copy.path().join("tests/scenarios/only-in-the-copy.toml"),
    )
    .unwrap();
    std::fs::remove_file(copy.path().join("vm/debian-12.toml")).unwrap();
    copy
}

/// The matrix harness as this checkout built it.
fn harness() -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args([
            "test",
            "--locked",
            "-p",
            "lab-matrix",
            "--test",
            "matrix",
            "--no-run",
        ])
        .arg("--message-format=json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building the harness failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "matrix")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo named the harness executable")
}

/// The harness's `--list`, run from `dir` with `SAL_WORKSPACE` as given (`None`: unset,
/// as under `cargo test`).
fn listed(harness: &Path, dir: &Path, workspace_var: Option<&Path>) -> String {
    let mut cmd = Command::new(harness);
    match workspace_var {
        Some(w) => cmd.env("SAL_WORKSPACE", w),
        None => cmd.env_remove("SAL_WORKSPACE"),
    };
    let out = cmd
        .current_dir(dir)
        .args(["--list", "--format=terse"])
        .env("SAL_TARGETS", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the harness's --list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_harness_lists_the_catalogue_of_the_checkout_it_runs_in() {
    let copy = other_checkout();
    let harness = harness();
    // As cargo runs it: from the package's directory.
    let copy_list = listed(&harness, &copy.path().join("tests"), None);
    assert!(copy_list.contains("only-in-the-copy"), "{copy_list}");
    assert!(!copy_list.contains("trigger-limit"), "{copy_list}");
    assert!(!copy_list.contains("debian-12"), "{copy_list}");

    let own_list = listed(&harness, &workspace().join("tests"), None);
    assert!(!own_list.contains("only-in-the-copy"), "{own_list}");
    assert!(own_list.contains("trigger-limit"), "{own_list}");

    // As xtask runs it: the workspace handed down, wherever the current directory is.
    let handed = listed(&harness, &workspace(), Some(copy.path()));
    assert!(handed.contains("only-in-the-copy"), "{handed}");
}

#[test]
fn xtask_reads_the_checkout_it_is_started_in() {
    let copy = other_checkout();
    let matrix = |dir: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .current_dir(dir)
            .arg("matrix")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "xtask matrix failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // From a subdirectory, as cargo leaves the current directory where the user is.
    assert!(!matrix(&copy.path().join("vm")).contains("debian-12"));
    assert!(matrix(&workspace().join("vm")).contains("debian-12"));
}
