//! Units the lab writes are checked by systemd itself: a key systemd or the quadlet
//! generator does not know fails the trial with their message, on a real guest. Without
//! the check, the mistyped RestrictAddressFamilies= below runs unrestricted and PASSes
//! on runc.
//!
//! Needs the static binaries (`SAL_ECHO_BIN`, `SAL_PROBE_BIN`); `cargo xtask ci` runs it.

use std::path::{Path, PathBuf};

use lab::events::Events;
use lab::run::{Trial, run_trial};
use lab::scenario::Scenario;
use lab::trial::{Outcome, TrialResult};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn trial(fixture: &str, runtime: &str) -> TrialResult {
    lab::host_env::init();
    let bins = lab::host_env::binaries()
        .expect("SAL_ECHO_BIN and SAL_PROBE_BIN: the static binaries (cargo xtask build-static)");
    let target = vm::target::Target::load(&workspace().join("vm/debian-13.toml")).unwrap();
    let events = Events::console();
    let ready = vm::ready::ensure_ready(&target, &bins, events.machine()).unwrap();
    let run_dir = workspace()
        .join("target/lab")
        .join(format!("unit-checks-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).unwrap();
    let scenario = Scenario::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{fixture}.toml")),
    )
    .unwrap();
    let trial = Trial {
        scenario,
        target,
        runtime: runtime.into(),
        mutant: None,
        conmon: None,
    };
    let result = run_trial(&trial, &ready, &run_dir, &events);
    lab::report::write_trial(&result).unwrap();
    eprintln!("{}\n{}", result.summary_line(), result.detail);
    result
}

#[test]
#[ignore = "boots a guest; run by cargo xtask ci"]
fn a_mistyped_service_key_fails_with_systemds_message() {
    let r = trial("mistyped-service-key", "runc");
    assert_eq!(r.outcome, Outcome::Fail, "{}", r.detail);
    assert!(
        r.detail
            .contains("systemd does not take the units as written")
            && r.detail
                .contains("/home/test/.config/systemd/user/echo.service:")
            && r.detail.contains("RestrictAddressFamilie"),
        "{}",
        r.detail
    );
}

#[test]
#[ignore = "boots a guest; run by cargo xtask ci"]
fn a_mistyped_quadlet_key_fails_with_the_generators_message() {
    let r = trial("mistyped-quadlet-key", "crun");
    assert_eq!(r.outcome, Outcome::Fail, "{}", r.detail);
    assert!(
        r.detail
            .contains("/home/test/.config/containers/systemd/echo.container")
            && r.detail.contains("Netwrk"),
        "{}",
        r.detail
    );
}
