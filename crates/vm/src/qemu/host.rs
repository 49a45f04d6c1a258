//! What the host offers guests: QEMU's version, the accelerator (probed once by booting
//! the guest's kernel under KVM, the answer kept per host kernel, QEMU and guest kernel),
//! and the cores guests share. Every command runs through [`crate::proc`], with a
//! deadline and dying with the lab.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;

use super::args::{Accel, kvm_probe_args, release};
use crate::config::{self, ACCEL_VAR};
use crate::proc;

/// The emulator every guest runs in.
pub const QEMU: &str = "qemu-system-x86_64";

/// How many guests this process runs side by side (the harness's `--test-threads`);
/// 0 until set: then a guest per core, as `cargo xtask test` runs by default, so `vm
/// build`, `vm ssh` and the tests make and use the ready state a default run uses.
static GUESTS_AT_ONCE: AtomicUsize = AtomicUsize::new(0);

pub fn set_guests_at_once(n: usize) {
    GUESTS_AT_ONCE.store(n.max(1), Ordering::Relaxed);
}

/// The guests this process runs side by side, for [`MachineSpec::sized_for`](super::MachineSpec::sized_for).
pub fn guests_at_once() -> usize {
    match GUESTS_AT_ONCE.load(Ordering::Relaxed) {
        0 => host_cores(),
        n => n,
    }
}

/// The host's cores, as the OS offers them to this process.
pub fn host_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The first line of `qemu-system-x86_64 --version`, read once per process: a saved
/// state is only loaded by the QEMU that saved it.
pub fn version() -> Result<String> {
    static VERSION: OnceLock<Result<String, String>> = OnceLock::new();
    VERSION
        .get_or_init(|| {
            let mut cmd = Command::new(QEMU);
            cmd.arg("--version");
            let out =
                proc::run(cmd, None, Duration::from_secs(30)).map_err(|e| format!("{e:#}"))?;
            out.stdout
                .lines()
                .next()
                .map(|l| l.trim().to_string())
                .filter(|l| out.success() && !l.is_empty())
                .ok_or_else(|| {
                    format!(
                        "{QEMU} --version printed no version ({}): {}",
                        out.status,
                        proc::tail(out.combined().trim(), 3)
                    )
                })
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The release of the QEMU on PATH, when its version line could be read.
pub fn running_release() -> Option<(u32, u32)> {
    version().ok().and_then(|v| release(&v))
}

/// Whether this user can open `/dev/kvm` read-write (necessary, not sufficient).
fn kvm_opens() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The accelerator decided for this process and why, once a kernel has been booted
/// with KVM (or KVM was ruled out without one).
static DECIDED: OnceLock<(Accel, String)> = OnceLock::new();

/// Why [`detect_accel`] chose what it chose, in words.
pub fn accel_reason(accel: Accel) -> String {
    if let Some((_, why)) = DECIDED.get() {
        return why.clone();
    }
    match accel {
        Accel::Kvm => {
            "/dev/kvm opens; not yet checked with a kernel (the first boot of a target does)".into()
        }
        Accel::Tcg => tcg_without_probe().unwrap_or_default(),
    }
}

/// `Some(reason)` when TCG is certain without booting anything.
fn tcg_without_probe() -> Option<String> {
    match config::get().forced_accel {
        Some(Accel::Kvm) => None,
        Some(Accel::Tcg) => Some(format!("forced by {}", ACCEL_VAR)),
        None if !kvm_opens() => {
            Some("no /dev/kvm this user can open (guests are 10-20x slower under TCG)".into())
        }
        None => None,
    }
}

/// The accelerator for guests: the one decided by [`decide_accel`] in this process, else
/// TCG when KVM is unavailable or KVM when `/dev/kvm` opens (unconfirmed: only the
/// Fedora provisioning boot, which has no kernel file to probe with, uses it so).
pub fn detect_accel() -> Accel {
    if let Some((a, _)) = DECIDED.get() {
        return *a;
    }
    if tcg_without_probe().is_some() {
        Accel::Tcg
    } else {
        Accel::Kvm
    }
}

/// Decides the accelerator for this process by booting `kernel` under KVM, without an
/// initrd: a working KVM runs it to its panic ("VFS: Unable to mount root fs") and, with
/// `panic=-1 -no-reboot`, QEMU exits within a second or two. `/dev/kvm` can open, and
/// even run the firmware, and still stop at the kernel (`KVM internal error ... emulation
/// failure`, the guest paused for ever, seen here), so only a kernel that ran is proof.
pub fn decide_accel(kernel: &Path) -> Accel {
    DECIDED
        .get_or_init(|| {
            if config::get().forced_accel == Some(Accel::Kvm) {
                return (Accel::Kvm, format!("forced by {}", ACCEL_VAR));
            }
            if let Some(why) = tcg_without_probe() {
                return (Accel::Tcg, why);
            }
            // The answer depends only on the host kernel, this QEMU and the guest kernel:
            // kept per combination, so only the first run pays the probe (15 s where KVM
            // hangs).
            let record = probe_record(kernel);
            if let Some(known) = record
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                && let Some((accel, why)) = known.split_once(": ")
            {
                let accel = if accel == "kvm" {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                };
                return (accel, format!("{why} (probed earlier on this host)"));
            }
            let decided = match kvm_runs_kernel(kernel) {
                Ok(()) => (
                    Accel::Kvm,
                    "/dev/kvm ran the guest kernel to its end".to_string(),
                ),
                Err(why) => (
                    Accel::Tcg,
                    format!("/dev/kvm opens but did not run the guest kernel: {why}"),
                ),
            };
            if let Some(p) = record {
                let _ = std::fs::create_dir_all(p.parent().expect("under the cache"));
                let _ = std::fs::write(&p, format!("{}: {}", decided.0.name(), decided.1));
            }
            decided
        })
        .0
}

/// Where the probe's answer for this host kernel, QEMU and guest kernel is kept.
fn probe_record(kernel: &Path) -> Option<PathBuf> {
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let key = crate::cache::key(&[
        ("host-kernel", host.trim().as_bytes()),
        ("qemu", version().ok()?.as_bytes()),
        (
            "guest-kernel",
            crate::cache::sha256_file(kernel).ok()?.as_bytes(),
        ),
    ]);
    Some(crate::cache::root().join("accel").join(key))
}

fn kvm_runs_kernel(kernel: &Path) -> std::result::Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let serial = dir.path().join("serial.log");
    let mut cmd = Command::new(QEMU);
    cmd.args(kvm_probe_args(kernel, &serial));
    // A working KVM takes 1-2 s; a broken one never ends.
    let limit = Duration::from_secs(15);
    let ended = proc::run_or_kill(cmd, limit).map_err(|e| format!("{e:#}"))?;
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    match ended {
        proc::Ended::Exited(_) if console.contains("Kernel panic") => Ok(()),
        proc::Ended::Exited(out) => Err(format!(
            "qemu ended ({}) before the kernel did: {}",
            out.status,
            proc::tail(out.stderr.trim(), 3)
        )),
        proc::Ended::Killed { stderr, .. } => Err(format!(
            "the kernel did not finish in {} s ({} bytes on its console){}",
            limit.as_secs(),
            console.len(),
            // QEMU's own words: the "KVM internal error" line, not the register dump after it.
            match stderr.lines().find(|l| l.contains("error")) {
                Some(line) => format!("; qemu: {}", line.trim()),
                None if stderr.trim().is_empty() => String::new(),
                None => format!("; qemu: {}", proc::tail(stderr.trim(), 1)),
            }
        )),
    }
}
