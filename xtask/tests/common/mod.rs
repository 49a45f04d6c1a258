//! What the tests that run the real `xtask` binary share: running it, and reading the
//! run directory it reports.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `xtask ARGS` from the workspace: whether it succeeded, and its stdout and stderr
/// (also printed, for a failing test's log).
pub fn xtask<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(workspace())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    (out.status.success(), text)
}

/// The run directory named on xtask's last `reports: ` line.
pub fn run_dir(output: &str) -> PathBuf {
    let line = output
        .lines()
        .rfind(|l| l.starts_with("reports: "))
        .expect("a reports: line");
    let dir = line
        .trim_start_matches("reports: ")
        .split("/{")
        .next()
        .unwrap();
    PathBuf::from(dir)
}
