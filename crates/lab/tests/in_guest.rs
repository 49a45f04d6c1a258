//! Host tests that need what this host may lack, run inside a lab guest instead: the
//! echo server's vsock test needs AF_VSOCK loopback (`vsock_loopback`), which a guest
//! has and a container or a CI runner often does not. The test binary and the server it
//! starts are static (musl) builds, copied into the guest at the paths the test binary
//! was compiled with.
//!
//! `SAL_ECHO_TEST_BIN` (the echo crate's `tests/echo.rs`, built for musl) and
//! `SAL_ECHO_TEST_SERVER` (the musl `socket-activate-echo` it starts), plus the lab's
//! static binaries for the ready state; `cargo xtask ci` sets them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lab::events::Events;
use vm::ready::Binaries;
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

#[test]
#[ignore = "boots a guest; run by cargo xtask ci"]
fn the_echo_servers_vsock_test_passes_in_a_guest() {
    let (test_bin, server) = (
        env_path("SAL_ECHO_TEST_BIN"),
        env_path("SAL_ECHO_TEST_SERVER"),
    );
    let bins = Binaries::from_env().expect("SAL_ECHO_BIN and SAL_PROBE_BIN");
    let target = vm::target::Target::load(&workspace().join("vm/debian-13.toml")).unwrap();
    let events = Events::console();
    let ready = vm::ready::ensure_ready(&target, &bins, events.machine()).unwrap();
    let dir = workspace()
        .join("target/lab")
        .join(format!("in-guest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vm = TrialVm::start(&ready, &dir, events.machine()).unwrap();
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
