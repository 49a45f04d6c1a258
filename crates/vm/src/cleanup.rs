//! What must not outlive an interrupted run. QEMU and every other child die with this
//! process (`PR_SET_PDEATHSIG`); files (trial overlays, half-built cache entries) are
//! registered here while they exist, and removed by the Ctrl-C/SIGTERM handler before
//! the process exits. Normal and panicking exits remove them through their owners' `Drop`.
//!
//! Work in progress can also register what to record if it is interrupted (a running
//! trial writes its FAIL); a process whose children do the work (`cargo xtask test`
//! around the harness) defers the exit, so it can still collect and report.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

type Action = Box<dyn Fn() + Send>;

static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static ACTIONS: Mutex<Vec<(PathBuf, Action)>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();
static DEFER_EXIT: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the signal handler (once per process).
pub fn install_handler() {
    HANDLER.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            INTERRUPTED.store(true, Ordering::SeqCst);
            if DEFER_EXIT.load(Ordering::SeqCst) {
                eprintln!("\ninterrupted: waiting for the trials to record it");
                return;
            }
            eprintln!("\ninterrupted: removing overlays and partial images");
            stop_groups();
            let actions = std::mem::take(&mut *ACTIONS.lock().unwrap_or_else(|e| e.into_inner()));
            for (_, action) in actions {
                action();
            }
            remove_all();
            // Children (qemu, ssh, mmdebstrap) are killed by the kernel when we exit.
            std::process::exit(130);
        });
    });
}

/// This process survives Ctrl-C (its children handle it); see [`interrupted`].
pub fn defer_exit() {
    install_handler();
    DEFER_EXIT.store(true, Ordering::SeqCst);
}

/// Whether Ctrl-C or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Records an interruption seen another way (a child that exited with 130).
pub fn mark_interrupted() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Registers a file or directory to remove if the run is interrupted.
pub fn register(path: &Path) {
    PATHS.lock().expect("cleanup lock").push(path.to_path_buf());
}

/// Forgets a path (it was removed or published by its owner).
pub fn unregister(path: &Path) {
    PATHS.lock().expect("cleanup lock").retain(|p| p != path);
}

/// Registers what to record under `id` if the run is interrupted before [`forget`].
pub fn on_interrupt(id: &Path, action: impl Fn() + Send + 'static) {
    ACTIONS
        .lock()
        .expect("cleanup lock")
        .push((id.to_path_buf(), Box::new(action)));
}

pub fn forget(id: &Path) {
    ACTIONS
        .lock()
        .expect("cleanup lock")
        .retain(|(p, _)| p != id);
}

/// A child running in a process group of its own (Ctrl-C from a terminal does not reach
/// it): the handler sends it SIGTERM and gives it two seconds to clean up.
pub fn register_group(pgid: u32) {
    GROUPS.lock().expect("cleanup lock").push(pgid);
}

pub fn unregister_group(pgid: u32) {
    GROUPS.lock().expect("cleanup lock").retain(|g| *g != pgid);
}

fn stop_groups() {
    let groups = std::mem::take(&mut *GROUPS.lock().unwrap_or_else(|e| e.into_inner()));
    if groups.is_empty() {
        return;
    }
    for g in &groups {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(*g as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    for g in &groups {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(*g as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn remove_all() {
    let paths = std::mem::take(&mut *PATHS.lock().unwrap_or_else(|e| e.into_inner()));
    for p in paths {
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

/// Every process on the machine with its command line, to find what a run left behind.
pub fn processes() -> Vec<(u32, String)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (!text.is_empty()).then_some((pid, text))
    })
    .collect()
}

/// The lab's directories in the temporary directory (QMP and ssh sockets, private apt
/// states): none outlives the process that made it.
pub fn lab_tmp_dirs() -> std::collections::BTreeSet<String> {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return Default::default();
    };
    rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("sal-"))
        .collect()
}
