//! The user's own build of a runtime, on the real build path: a "crun" source tree this
//! test makes, built with the crun recipe (`./autogen.sh`, `./configure`, `make`) in the
//! real trixie build root into a wrapper around the guest's crun.
//! - `xtask bisect --git DIR`: one commit makes the wrapper drop `LISTEN_FDS` (the lab's
//!   own strip-listen-fds mutant), one does not build. The bisect must name exactly the
//!   commit that drops the variables, skip the one that does not build, and refuse an
//!   old end that already fails.
//! - `crun@git:DIR` of a dirty checkout is built with its uncommitted changes and says so.
//! - `crun@path:FILE`: a wrapper runs, and a binary the guest's loader refuses is a FAIL
//!   with the loader's words and what the guest has.
//!
//! Needs root and QEMU; `cargo xtask ci` runs it with `--include-ignored`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_dir, xtask};

const MAKEFILE: &str = "all: crun\ncrun: crun.in\n\tcp crun.in crun\n\tchmod 755 crun\n";
const BROKEN_MAKEFILE: &str = "all:\n\t@echo 'error: this revision does not build' >&2; exit 1\n";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=lab",
            "-c",
            "user.email=lab@example.invalid",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn commit(dir: &Path, files: &[(&str, &str)], subject: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let mode = if ["autogen.sh", "configure"].contains(name) {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", subject]);
    git(dir, &["rev-parse", "HEAD"])
}

/// c1 passes (the old end), c2 and c3 pass, c4 does not build, c5 builds again and
/// passes, c6 drops LISTEN_FDS, c7 fails too (the new end). Returns the commits.
fn repository(dir: &Path) -> Vec<String> {
    git(dir, &["init", "-q"]);
    let pass = "#!/bin/sh\n# a wrapper around the guest's crun\nexec /usr/bin/crun \"$@\"\n";
    let strip = lab::mutant::strip_listen_fds_wrapper("/usr/bin/crun");
    let mut c = vec![commit(
        dir,
        &[
            ("autogen.sh", "#!/bin/sh\ntrue\n"),
            ("configure", "#!/bin/sh\ntrue\n"),
            ("Makefile", MAKEFILE),
            ("crun.in", pass),
        ],
        "a crun that passes everything on",
    )];
    c.push(commit(dir, &[("README", "one\n")], "docs: one"));
    c.push(commit(dir, &[("README", "two\n")], "docs: two"));
    c.push(commit(
        dir,
        &[("Makefile", BROKEN_MAKEFILE)],
        "build: break the build",
    ));
    c.push(commit(
        dir,
        &[("Makefile", MAKEFILE)],
        "build: mend the build",
    ));
    c.push(commit(
        dir,
        &[("crun.in", &strip)],
        "drop LISTEN_FDS from the container",
    ));
    c.push(commit(dir, &[("README", "three\n")], "docs: three"));
    c
}

fn bisect(dir: &Path, old: &str, new: &str) -> (bool, String) {
    xtask([
        "bisect".as_ref(),
        "echo-tcp4".as_ref(),
        "--runtime".as_ref(),
        "crun".as_ref(),
        "--git".as_ref(),
        dir.as_os_str(),
        "--old".as_ref(),
        old.as_ref(),
        "--new".as_ref(),
        new.as_ref(),
    ])
}

/// The `bisect: HASH ...` progress lines: which commits were tested, with what.
fn tested(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("bisect: "))
        .filter(|l| l.contains(" -> "))
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "builds in a build root and boots guests; run by cargo xtask ci"]
fn the_bisect_names_the_commit_that_drops_listen_fds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("crun");
    std::fs::create_dir(&dir).unwrap();
    let c = repository(&dir);
    let (ok, output) = bisect(&dir, &c[0], &c[6]);
    assert!(ok, "{output}");
    assert!(
        output.contains(&format!(
            "the first commit with the new outcome: {} drop LISTEN_FDS from the container",
            c[5]
        )),
        "{output}"
    );
    let lines = tested(&output);
    let line_of = |commit: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&commit[..12]))
            .cloned()
            .unwrap_or_default()
    };
    assert!(line_of(&c[0]).ends_with("PASS -> old"), "{lines:?}");
    assert!(line_of(&c[6]).ends_with("FAIL -> new"), "{lines:?}");
    assert!(
        line_of(&c[3]).ends_with("no build -> skip (does not build)"),
        "the commit that does not build must be tried and skipped: {lines:?}"
    );
    assert!(line_of(&c[4]).ends_with("PASS -> old"), "{lines:?}");
    assert!(line_of(&c[5]).ends_with("FAIL -> new"), "{lines:?}");
    // The deciding lines of the first new commit and of its parent.
    assert!(output.contains("its trial: FAIL"), "{output}");
    assert!(output.contains("its parent"), "{output}");
    // The user's checkout is untouched: no bisect state, no worktree, same HEAD.
    assert_eq!(git(&dir, &["rev-parse", "HEAD"]), c[6]);
    assert!(!dir.join(".git/BISECT_LOG").exists());
    assert_eq!(git(&dir, &["worktree", "list"]).lines().count(), 1);
    assert_eq!(git(&dir, &["status", "--porcelain"]), "");
    let run = run_dir(&output);
    let md = std::fs::read_to_string(run.join("bisect.md")).unwrap();
    assert!(md.contains(&c[5]), "{md}");
    let page = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(
        page.contains("Bisect by commit") && page.contains(&c[5][..12]),
        "report.html has no commit table"
    );
    // Each built trial keeps its build log.
    let logs = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("build-crun.log").is_file())
        .count();
    assert!(
        logs >= 4,
        "{logs} trials with a build.log in {}",
        run.display()
    );
    // Nothing of the bisect is left: no clone, no build directory.
    let left: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("bisect-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
#[ignore = "builds in a build root and boots guests; run by cargo xtask ci"]
fn an_old_end_that_fails_is_refused_with_its_evidence() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("crun");
    std::fs::create_dir(&dir).unwrap();
    let c = repository(&dir);
    let (ok, output) = bisect(&dir, &c[5], &c[6]);
    assert!(!ok, "{output}");
    assert!(
        output.contains(&format!("the old end {} ", c[5]))
            && output.contains("does not give the old outcome (pass): it was FAIL")
            && output.contains("nothing was bisected"),
        "{output}"
    );
    // The evidence: the echo server's own complaint, from the journal of the failing step.
    assert!(output.contains("LISTEN_FDS"), "{output}");
}

#[test]
fn bad_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let (ok, output) = bisect(&missing, "a", "b");
    assert!(
        !ok && output.contains("nope") && output.contains("does not exist"),
        "{output}"
    );
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let (ok, output) = bisect(&plain, "a", "b");
    assert!(!ok && output.contains("is not a git checkout"), "{output}");
    let dir = tmp.path().join("crun");
    std::fs::create_dir(&dir).unwrap();
    let c = repository(&dir);
    let (ok, output) = bisect(&dir, "v9.9", &c[6]);
    assert!(
        !ok && output.contains("revision \"v9.9\" does not exist"),
        "{output}"
    );
    let (ok, output) = bisect(&dir, &c[6], &c[0]);
    assert!(!ok && output.contains("is not an ancestor"), "{output}");
}

/// `xtask test echo-tcp4 --runtime SPEC`: its exit status, output and run directory.
fn test_with(runtime: &str) -> (bool, String, PathBuf) {
    let (ok, text) = xtask(["test", "echo-tcp4::", "--runtime", runtime]);
    let run = if text.contains("reports: ") {
        run_dir(&text)
    } else {
        PathBuf::new()
    };
    (ok, text, run)
}

#[test]
#[ignore = "builds in a build root and boots guests; run by cargo xtask ci"]
fn a_dirty_checkout_is_built_with_its_changes_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("crun");
    std::fs::create_dir(&dir).unwrap();
    let c = repository(&dir);
    // HEAD drops LISTEN_FDS; the uncommitted change passes them on again.
    git(&dir, &["checkout", "-q", &c[5]]);
    std::fs::write(
        dir.join("crun.in"),
        "#!/bin/sh\n# mended, not committed\nexec /usr/bin/crun \"$@\"\n",
    )
    .unwrap();
    let (ok, output, run) = test_with(&format!("crun@git:{}", dir.display()));
    assert!(ok, "{output}");
    assert!(
        output.contains("is dirty: built HEAD with its uncommitted changes"),
        "{output}"
    );
    let summary = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(
        summary.contains("with its uncommitted changes") && summary.contains("-dirty"),
        "{summary}"
    );
    let trial = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("echo-tcp4--"))
        .unwrap()
        .path();
    let diff = std::fs::read_to_string(trial.join("source-crun.diff")).unwrap();
    assert!(diff.contains("+# mended, not committed"), "{diff}");
    // The checkout is as the user left it.
    assert_eq!(git(&dir, &["status", "--porcelain"]), "M crun.in");
}

/// A program linked against a library only this host has: the guest's loader refuses it.
fn binary_missing_a_library(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("lib.c"), "int sal_missing(void) { return 0; }\n").unwrap();
    std::fs::write(
        dir.join("main.c"),
        "int sal_missing(void);\nint main(void) { return sal_missing(); }\n",
    )
    .unwrap();
    let cc = |args: &[&str]| {
        let ok = Command::new("cc")
            .current_dir(dir)
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "cc {args:?}");
    };
    cc(&["-shared", "-fPIC", "-o", "libsalmissing.so", "lib.c"]);
    cc(&["-o", "crun", "main.c", "-L.", "-lsalmissing"]);
    dir.join("crun")
}

#[test]
#[ignore = "boots guests; run by cargo xtask ci"]
fn host_binaries_run_or_fail_with_the_loaders_words() {
    let tmp = tempfile::tempdir().unwrap();
    // A wrapper in a git tree runs, and the results name the tree's describe.
    let dir = tmp.path().join("wrapper");
    std::fs::create_dir(&dir).unwrap();
    let c = repository(&dir);
    git(&dir, &["tag", "v0.1", &c[0]]);
    git(&dir, &["checkout", "-q", "v0.1"]);
    let wrapper = dir.join("crun.in");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (ok, output, run) = test_with(&format!("crun@path:{}", wrapper.display()));
    assert!(ok, "{output}");
    let summary = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(
        summary.contains(&format!("binary {}", wrapper.display())),
        "{summary}"
    );
    assert!(
        summary.contains("at v0.1-dirty"),
        "the mode change makes the tree dirty: {summary}"
    );
    // A binary the guest's loader refuses: a FAIL with its words and what the guest has.
    let dir = tmp.path().join("cc");
    std::fs::create_dir(&dir).unwrap();
    let binary = binary_missing_a_library(&dir);
    let (ok, output, _) = test_with(&format!("crun@path:{}", binary.display()));
    assert!(!ok, "{output}");
    assert!(
        output.contains("cannot run in the guest")
            && output.contains("libsalmissing.so: cannot open shared object file")
            && output.contains("guest: x86_64, ldd (Debian GLIBC")
            && output.contains("ldd: \tlibsalmissing.so => not found"),
        "{output}"
    );
}
