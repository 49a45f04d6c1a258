//! `cargo xtask repro DIR` on a scenario directory outside the repository: a bug
//! report's files copied into a temporary directory, run on a real guest, with the
//! reports written as `cargo xtask test` writes them. And a unit file systemd refuses:
//! a FAIL with systemd's own words, before any step.
//!
//! Needs root and QEMU; `cargo xtask ci` runs it with `--ignored`.

mod common;

use std::path::{Path, PathBuf};

use common::{run_dir, workspace, xtask};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// A copy of the example `example` in a temp directory named `name`, with `from`
/// replaced by `to` in its file `file`.
fn edited_copy(
    example: &str,
    name: &str,
    file: &str,
    from: &str,
    to: &str,
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_dir(&workspace().join("tests/scenarios").join(example), &dir);
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
    (tmp, dir)
}

/// Runs `xtask repro DIR --runtime crun` (a guest per core, as a default run, so it
/// uses that run's ready state); its exit status and output.
fn repro(dir: &Path) -> (bool, String) {
    xtask([
        "repro".as_ref(),
        dir.as_os_str(),
        "--runtime".as_ref(),
        "crun".as_ref(),
    ])
}

#[test]
#[ignore = "boots a guest; run by cargo xtask ci"]
fn a_directory_outside_the_repository_runs_and_writes_its_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("my-report");
    copy_dir(&workspace().join("tests/scenarios/echo-template"), &dir);
    let (ok, output) = repro(&dir);
    assert!(ok, "{output}");
    assert!(
        output.contains("PASS my-report::debian-13::crun"),
        "{output}"
    );
    let run = run_dir(&output);
    let results = std::fs::read_to_string(run.join("results.json")).unwrap();
    assert!(
        results.contains("\"my-report::debian-13::crun\""),
        "{results}"
    );
    let trial = run.join("my-report--debian-13--crun");
    let diff = std::fs::read_to_string(trial.join("rewrites/echo@.service.diff")).unwrap();
    assert!(
        diff.contains(
            "+ExecStart=/usr/bin/podman run --rm --replace --name echo-%i --runtime crun"
        ) && diff.contains("localhost/socket-activate-echo:latest"),
        "{diff}"
    );
    assert!(
        trial
            .join("files/echo@demo.socket.d/override.conf")
            .is_file()
    );
}

#[test]
#[ignore = "boots a guest; run by cargo xtask ci"]
fn a_unit_file_systemd_refuses_fails_with_its_words() {
    let (_tmp, dir) = edited_copy(
        "restricted-echo",
        "refused",
        "restricted-echo.service",
        "NoNewPrivileges=yes",
        "NoNewPrivilege=yes\nExecStartPre=relative/path",
    );
    let (ok, output) = repro(&dir);
    assert!(!ok, "{output}");
    assert!(
        output.contains("FAIL refused::debian-13::crun")
            && output.contains("systemd does not take the units as written")
            && output.contains("restricted-echo.service:13: Unknown key 'NoNewPrivilege'"),
        "{output}"
    );
}

#[test]
#[ignore = "boots a guest; run by cargo xtask ci"]
fn an_image_no_rewrite_maps_is_an_error_naming_file_and_line() {
    let (_tmp, dir) = edited_copy(
        "quadlet-echo",
        "unmapped",
        "scenario.toml",
        "images = { \"ghcr.io/eriksjolund/socket-activate-echo\" = \"echo\" }\n",
        "",
    );
    let (ok, output) = repro(&dir);
    assert!(!ok, "{output}");
    assert!(
        output.contains(
            "echo.container:7: the image \"ghcr.io/eriksjolund/socket-activate-echo\" is not in the guest"
        ),
        "{output}"
    );
}
