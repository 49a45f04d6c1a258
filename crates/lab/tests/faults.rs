//! Faults, for real: each test strikes a real trial (or a real cache entry) the way a
//! run goes wrong outside the lab's control, and checks the three promises: the trial is
//! a FAIL whose detail says what happened, the evidence stays in the trial directory
//! (commands, console, QEMU's log), and nothing is left behind (no qemu or ssh process,
//! no overlay, no QMP or ssh socket directory, no half-built cache entry).
//!
//! The trials run on debian-13 from its ready state (built when missing). Needs root,
//! mmdebstrap, the static binaries (`SAL_ECHO_BIN`, `SAL_PROBE_BIN`) and minutes of
//! QEMU: `cargo xtask ci` runs them with `--ignored --test-threads=1` (they count the
//! machine's processes and /tmp, so one at a time). Interrupting `cargo xtask` itself
//! (Ctrl-C) is tested in xtask's `tests/interrupt.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lab::events::Events;
use lab::run::{Trial, run_trial};
use lab::scenario::Scenario;
use lab::trial::{Outcome, TrialResult};
use vm::ready::{Binaries, Ready};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bins() -> Binaries {
    lab::host_env::init();
    lab::host_env::binaries()
        .expect("SAL_ECHO_BIN and SAL_PROBE_BIN: the static binaries (cargo xtask build-static)")
}

fn events() -> Events {
    Events::console()
}

fn target() -> vm::target::Target {
    lab::host_env::init();
    vm::target::Target::load(&workspace().join("vm/debian-13.toml")).unwrap()
}

fn ready() -> Ready {
    vm::ready::ensure_ready(&target(), &bins(), events().machine()).unwrap()
}

/// What a trial may leave: nothing running that names its directory or its ssh port,
/// no overlay, no new socket directory in /tmp.
fn assert_nothing_left(dir: &Path, ssh_port: Option<u16>, tmp_before: &BTreeSet<String>) {
    // Processes get a moment to be reaped by the kernel after their owner's kill.
    let deadline = Instant::now() + Duration::from_secs(5);
    let dir_text = dir.display().to_string();
    let port_arg = ssh_port.map(|p| format!("-p {p} "));
    loop {
        let left: Vec<(u32, String)> = vm::cleanup::processes()
            .into_iter()
            .filter(|(_, c)| {
                c.contains(&dir_text)
                    || port_arg
                        .as_ref()
                        .is_some_and(|p| c.starts_with("ssh ") && c.contains(p.as_str()))
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left running: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !dir.join("disk.qcow2").exists(),
        "the overlay was left behind"
    );
    let new: Vec<String> = vm::cleanup::lab_tmp_dirs()
        .difference(tmp_before)
        .cloned()
        .collect();
    assert!(new.is_empty(), "left in /tmp: {new:?}");
}

/// The trial's QEMU: its pid and the host port of the guest's ssh, once it runs. QEMU
/// binds the forward itself (port 0 on its command line), so the port is the one its
/// process listens on, as `ss` shows it.
fn trial_qemu(dir: &Path) -> Option<(u32, u16)> {
    let overlay = dir.join("disk.qcow2").display().to_string();
    let (pid, _) = vm::cleanup::processes()
        .into_iter()
        .find(|(_, c)| c.starts_with("qemu-system") && c.contains(&overlay))?;
    let out = std::process::Command::new("ss")
        .args(["-Hltnp"])
        .output()
        .ok()?;
    let owner = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&owner))
        .find_map(|l| {
            let local = l.split_whitespace().nth(3)?;
            local.strip_prefix("127.0.0.1:")?.parse().ok()
        })
        .map(|port| (pid, port))
}

/// Waits until the trial's long step has started (its command is in the log).
fn wait_for_long_step(dir: &Path) -> (u32, u16) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let log = std::fs::read_to_string(dir.join("commands.log")).unwrap_or_default();
        if log.contains("sleep 20")
            && let Some(q) = trial_qemu(dir)
        {
            // The command is on its way over ssh; let it reach the guest.
            std::thread::sleep(Duration::from_secs(1));
            return q;
        }
        assert!(Instant::now() < deadline, "the long step never started");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

/// Runs the fixture trial with `strike` called (in a thread) once its long step runs;
/// returns the result, the trial directory and the guest's ssh port.
fn trial_with_fault(
    name: &str,
    strike: impl FnOnce(u32, u16) + Send + 'static,
) -> (TrialResult, PathBuf, u16) {
    let ready = ready();
    let tmp_before = vm::cleanup::lab_tmp_dirs();
    let run_dir = workspace()
        .join("target/lab")
        .join(format!("faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).unwrap();
    let scenario = Scenario::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fault-long-step.toml"),
    )
    .unwrap();
    let trial = Trial {
        scenario,
        target: ready.target.clone(),
        runtime: "crun".into(),
        mutant: None,
        conmon: None,
    };
    let dir = run_dir.join(trial.name().replace("::", "--"));
    let port = Arc::new(std::sync::Mutex::new(0u16));
    let injector = {
        let (dir, port) = (dir.clone(), port.clone());
        std::thread::spawn(move || {
            let (pid, p) = wait_for_long_step(&dir);
            *port.lock().unwrap() = p;
            strike(pid, p);
        })
    };
    let result = run_trial(&trial, &ready, &run_dir, &events());
    injector.join().expect("the fault injector");
    let port = *port.lock().unwrap();
    eprintln!("{}\n{}", result.summary_line(), result.detail);
    assert_eq!(result.outcome, Outcome::Fail, "{}", result.detail);
    let log = std::fs::read_to_string(dir.join("commands.log")).unwrap();
    assert!(log.contains("$ [test] sleep 20"), "commands.log:\n{log}");
    assert!(dir.join("console.log").is_file() && dir.join("qemu.log").is_file());
    assert_nothing_left(&dir, Some(port), &tmp_before);
    (result, dir, port)
}

#[test]
#[ignore = "needs root, a debian-13 ready state and the static binaries: cargo xtask ci"]
fn qemu_killed_mid_step() {
    let (result, _, _) = trial_with_fault("kill", |qemu, _| {
        signal(qemu, nix::sys::signal::Signal::SIGKILL)
    });
    assert!(
        result
            .detail
            .contains("QEMU exited during the trial (signal: 9 (SIGKILL))"),
        "{}",
        result.detail
    );
    assert!(result.detail.contains("run `sleep 20`") || result.detail.contains("sleep 20"));
}

#[test]
#[ignore = "needs root, a debian-13 ready state and the static binaries: cargo xtask ci"]
fn qemu_stopped_until_the_steps_deadline() {
    let (result, _, _) = trial_with_fault("stop", |qemu, _| {
        signal(qemu, nix::sys::signal::Signal::SIGSTOP)
    });
    assert!(
        result.detail.contains("`sleep 20` as test")
            && result.detail.contains("did not finish within 12 s")
            && result.detail.contains("QEMU does not answer QMP"),
        "{}",
        result.detail
    );
}

#[test]
#[ignore = "needs root, a debian-13 ready state and the static binaries: cargo xtask ci"]
fn ssh_master_killed_mid_command() {
    let (result, _, _) = trial_with_fault("ssh", |_, port| {
        let port_arg = format!("-p {port} ");
        let (master, _) = vm::cleanup::processes()
            .into_iter()
            .find(|(_, c)| {
                c.starts_with("ssh ") && c.contains("ControlMaster=yes") && c.contains(&port_arg)
            })
            .expect("the trial's ssh master");
        signal(master, nix::sys::signal::Signal::SIGKILL);
    });
    assert!(
        result
            .detail
            .contains("ssh to the guest failed running `sleep 20`"),
        "{}",
        result.detail
    );
}

/// A copy of the real cache with the base image (hard links: it is only read) and the
/// ready state (a real copy: the test damages it), as `XDG_CACHE_HOME`.
fn cache_copy(ready: &Ready) -> tempfile::TempDir {
    let home = tempfile::Builder::new()
        .prefix("sal-faults-cache-")
        .tempdir_in(workspace().join("target"))
        .unwrap();
    let images = home.path().join("socket-activation-lab/images");
    std::fs::create_dir_all(&images).unwrap();
    let base = &ready.base.dir;
    let status = std::process::Command::new("cp")
        .arg("-al")
        .arg(base)
        .arg(images.join(base.file_name().unwrap()))
        .status()
        .unwrap();
    assert!(status.success());
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&ready.dir)
        .arg(images.join(ready.dir.file_name().unwrap()))
        .status()
        .unwrap();
    assert!(status.success());
    home
}

/// One test, since XDG_CACHE_HOME is process-wide: a truncated ready state and one
/// recorded as saved by another QEMU are each refused and rebuilt, never loaded.
#[test]
#[ignore = "needs root, a debian-13 ready state and the static binaries: cargo xtask ci"]
fn broken_ready_states_are_rebuilt_not_used() {
    let real = ready();
    let home = cache_copy(&real);
    // SAFETY: single-threaded here; nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("XDG_CACHE_HOME", home.path()) };
    lab::host_env::init();
    let copy = home
        .path()
        .join("socket-activation-lab/images")
        .join(real.dir.file_name().unwrap());

    // Truncated: the migration stream loses its last 4 KiB.
    let state = copy.join("state.mig");
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    let rebuilt = ready();
    assert_eq!(rebuilt.dir, copy);
    let verified = vm::cache::Manifest::verify(&copy).expect("the rebuilt entry verifies");
    assert_eq!(
        verified.files.get("state.mig"),
        Some(&std::fs::metadata(&state).unwrap().len())
    );
    let vm =
        vm::trial_vm::TrialVm::start(&rebuilt, &home.path().join("trial-1"), events().machine())
            .unwrap();
    drop(vm);

    // Saved by another QEMU: the manifest records 7.2.
    let manifest_path = copy.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let ours = manifest["facts"]["qemu"].as_str().unwrap().to_string();
    manifest["facts"]["qemu"] =
        "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)".into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let state_before = std::fs::metadata(&state).unwrap().modified().unwrap();
    let rebuilt = ready();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    assert_eq!(manifest["facts"]["qemu"].as_str(), Some(ours.as_str()));
    assert_ne!(
        std::fs::metadata(&state).unwrap().modified().unwrap(),
        state_before
    );
    let vm =
        vm::trial_vm::TrialVm::start(&rebuilt, &home.path().join("trial-2"), events().machine())
            .unwrap();
    drop(vm);
    // No staging directory survives either rebuild.
    let staged: Vec<_> = std::fs::read_dir(copy.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".building-"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
}

/// A full disk under the cache while an image is built: a clear error, no half entry.
/// The cache is a small ext4 on a loop device.
#[test]
#[ignore = "needs root, loop devices and mmdebstrap: cargo xtask ci"]
fn full_disk_while_building_an_image() {
    let work = tempfile::Builder::new()
        .prefix("sal-faults-disk-")
        .tempdir_in(workspace().join("target"))
        .unwrap();
    let file = work.path().join("fs.img");
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (file_s, mnt_s) = (file.to_str().unwrap(), mnt.to_str().unwrap());
    run(&["truncate", "-s", "160M", file_s]);
    run(&["mkfs.ext4", "-q", file_s]);
    run(&["mount", "-o", "loop", file_s, mnt_s]);
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    // SAFETY: single-threaded here; nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("XDG_CACHE_HOME", &mnt) };
    lab::host_env::init();
    let err = vm::image::ensure_base(&target(), events().machine())
        .map(|_| ())
        .expect_err("a 160 MiB cache cannot hold a guest image");
    let text = format!("{err:#}");
    eprintln!("{text}");
    assert!(
        text.contains("mmdebstrap trixie failed") && text.contains("is full"),
        "{text}"
    );
    let images = mnt.join("socket-activation-lab/images");
    let left: Vec<String> = std::fs::read_dir(&images)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the cache: {left:?}");
}
