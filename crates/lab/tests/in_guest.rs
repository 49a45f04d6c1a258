//! Tests that need a lab guest: host tests that need what this host may lack (the echo
//! server's vsock test needs AF_VSOCK loopback, `vsock_loopback`, which a guest has and a
//! container or a CI runner often does not; the test binary and the server it starts are
//! static musl builds, copied into the guest at the paths the test binary was compiled
//! with), the guest's package set against what apt installs for a user, and what the
//! ready state has done once so that trials do not.
//!
//! `SAL_ECHO_TEST_BIN` (the echo crate's `tests/echo.rs`, built for musl) and
//! `SAL_ECHO_TEST_SERVER` (the musl `socket-activate-echo` it starts), plus the lab's
//! static binaries for the ready state; `cargo xtask ci` sets them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lab::events::Events;
use vm::trial_vm::TrialVm;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(
        std::env::var_os(name)
            .unwrap_or_else(|| panic!("{name}: the path of a musl build (cargo xtask ci sets it)")),
    )
}

/// A restored guest of debian-13 (its ready state built or reused).
fn debian_13_guest(dir_name: &str) -> TrialVm {
    lab::host_env::init();
    let bins = lab::host_env::binaries().expect("SAL_ECHO_BIN and SAL_PROBE_BIN");
    let target = vm::target::Target::load(&workspace().join("vm/debian-13.toml")).unwrap();
    let events = Events::console();
    let ready = vm::ready::ensure_ready(&target, &bins, events.machine()).unwrap();
    let dir = workspace()
        .join("target/lab")
        .join(format!("{dir_name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    TrialVm::start(&ready, &dir, events.machine()).unwrap()
}

#[test]
#[ignore = "boots a guest; run by cargo xtask ci"]
fn the_guest_has_what_apt_installs_for_a_user_but_what_the_target_leaves_out() {
    let vm = debian_13_guest("apt-set");
    let t = Duration::from_secs(60);
    let read = |path: &str| {
        vm.guest
            .root_ok(&format!("cat {}", vm::proc::quote(path)), t)
            .unwrap()
            .stdout
    };
    let (apt, left) = (
        read(vm::debian::APT_WOULD_ADD),
        read(vm::debian::LEFT_OUT_WOULD_ADD),
    );
    let diffs = vm::debian::unlisted_differences(&apt, &left);
    assert!(diffs.is_empty(), "{diffs:#?}");
    // What a user-defined network needs on trixie is there: netavark runs nft.
    let nft = vm.guest.root("command -v nft", t).unwrap();
    assert!(nft.success(), "no nft in the guest: {}", nft.combined());
}

/// debian-13's podman (5.4) builds a pod's infra image with a user's first pod; the ready
/// state has had that pod, so a trial's pod builds nothing.
#[test]
#[ignore = "boots a guest; run by cargo xtask ci"]
fn a_pod_in_a_restored_guest_builds_no_infra_image() {
    let vm = debian_13_guest("first-pod");
    let t = Duration::from_secs(120);
    let images = || {
        vm.guest
            .user_ok("podman images --quiet --no-trunc | sort", t)
            .unwrap()
            .stdout
    };
    let before = images();
    let pause = vm
        .guest
        .user_ok(
            "podman images --quiet --filter reference=localhost/podman-pause",
            t,
        )
        .unwrap()
        .stdout;
    assert!(
        !pause.trim().is_empty(),
        "no localhost/podman-pause in the ready state; its images:\n{before}"
    );
    vm.guest
        .user_ok(
            "podman pod create --name lab-pod >/dev/null && podman pod start lab-pod >/dev/null",
            t,
        )
        .unwrap();
    assert_eq!(images(), before, "creating a pod changed the images");
}

#[test]
#[ignore = "boots a guest; run by cargo xtask ci"]
fn the_echo_servers_vsock_test_passes_in_a_guest() {
    let (test_bin, server) = (
        env_path("SAL_ECHO_TEST_BIN"),
        env_path("SAL_ECHO_TEST_SERVER"),
    );
    let vm = debian_13_guest("in-guest");
    let g = &vm.guest;
    let t = Duration::from_secs(120);
    for p in [&test_bin, &server] {
        let parent = p.parent().unwrap().display().to_string();
        g.root_ok(&format!("mkdir -p {}", vm::proc::quote(&parent)), t)
            .unwrap();
        g.copy_in(p, &p.display().to_string(), 0o755).unwrap();
    }
    let out = g
        .root(
            &format!(
                "{} --ignored --exact echoes_vsock_stream --test-threads=1",
                vm::proc::quote(&test_bin.display().to_string())
            ),
            t,
        )
        .unwrap();
    eprintln!("{}", out.combined());
    assert!(out.success(), "{}", out.combined());
    assert!(
        out.stdout.contains("test echoes_vsock_stream ... ok") && out.stdout.contains("1 passed"),
        "{}",
        out.stdout
    );
}
