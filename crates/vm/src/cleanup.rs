//! What must not outlive an interrupted run. QEMU and every other child die with this
//! process (`PR_SET_PDEATHSIG`); files (trial overlays, half-built cache entries) are
//! registered here while they exist, and removed by the Ctrl-C/SIGTERM handler before
//! the process exits. Normal and panicking exits remove them through their owners' `Drop`.
//!
//! Work in progress can also register what to record if it is interrupted (a running
//! trial writes its FAIL); a process whose children do the work (`cargo xtask test`
//! around the harness) defers the exit, so it can still collect and report.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, Once};

type Action = Box<dyn Fn() + Send>;

static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static ACTIONS: Mutex<Vec<(PathBuf, Action)>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();
static DEFER_EXIT: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The child that handles an interruption for this process (see [`hand_interrupts_to`]).
static HANDLED_BY: AtomicI32 = AtomicI32::new(0);

/// Installs the signal handler (once per process).
pub fn install_handler() {
    HANDLER.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            INTERRUPTED.store(true, Ordering::SeqCst);
            if DEFER_EXIT.load(Ordering::SeqCst) {
                eprintln!("\ninterrupted: waiting for the trials to record it");
                let child = HANDLED_BY.load(Ordering::SeqCst);
                if child > 0 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(child),
                        nix::sys::signal::Signal::SIGINT,
                    );
                }
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

/// Undoes [`defer_exit`] once the children that handled interruptions are gone: a
/// process that goes on with work of its own (the builds of a bisect between its
/// trials) cleans up and exits on Ctrl-C again.
pub fn exit_on_interrupt() {
    install_handler();
    DEFER_EXIT.store(false, Ordering::SeqCst);
}

/// The child (`Some(pid)`, `None` once it has exited) that does this deferring process's
/// work and handles the interruption: a signal sent to this process alone (`kill PID`, a
/// supervisor stopping the command it started) is passed on to it as SIGINT, since only a
/// terminal's Ctrl-C reaches the whole process group. A child that got the terminal's
/// SIGINT as well acts once: its handler exits.
pub fn hand_interrupts_to(child: Option<u32>) {
    let pid = child.and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    HANDLED_BY.store(pid, Ordering::SeqCst);
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

/// What a run killed outright (SIGKILL, a machine that went away) could not remove, found
/// and removed by the next run: the signal handler and `Drop` never ran for it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// `sal-qemu-*` and `sal-ssh-*` directories whose socket nobody listens on.
    pub tmp_dirs: Vec<PathBuf>,
    /// Trial overlays (`disk.qcow2`) of runs whose process is gone, open in no process.
    pub overlays: Vec<PathBuf>,
}

impl Swept {
    pub fn is_empty(&self) -> bool {
        self.tmp_dirs.is_empty() && self.overlays.is_empty()
    }
}

/// An overlay this recent is left alone even when it looks orphaned: a run between
/// creating it and starting QEMU must not lose it.
const OVERLAY_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

/// Removes what killed runs left: in `tmp` (the temporary directory), the lab's QMP and
/// ssh-control directories whose socket refuses connections (a live QEMU or ssh master
/// accepts them); in `lab_dir` (`target/lab`), the overlays of trial directories whose
/// run's process (`run-<time>-<pid>`) no longer exists and that no process has open.
pub fn sweep_killed_runs(tmp: &Path, lab_dir: &Path) -> Swept {
    let mut swept = Swept::default();
    for dir in read_dir_paths(tmp) {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("sal-qemu-") || name.starts_with("sal-ssh-")) {
            continue;
        }
        if abandoned_socket_dir(&dir) && std::fs::remove_dir_all(&dir).is_ok() {
            swept.tmp_dirs.push(dir);
        }
    }
    // Read only when an overlay of a dead run is found: most runs find none.
    let mut open: Option<std::collections::HashSet<PathBuf>> = None;
    for run in read_dir_paths(lab_dir) {
        let Some(pid) = run_pid(&run) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        for trial in read_dir_paths(&run) {
            let disk = trial.join("disk.qcow2");
            let old = std::fs::metadata(&disk)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > OVERLAY_GRACE);
            if old
                && !open.get_or_insert_with(open_files).contains(&disk)
                && std::fs::remove_file(&disk).is_ok()
            {
                swept.overlays.push(disk);
            }
        }
    }
    swept
}

/// A directory with sockets in it, none of which anybody listens on any more: what a
/// killed QEMU (QMP) or ssh master (its control socket) leaves. One without a socket yet
/// may still be being set up, and is not.
pub fn abandoned_socket_dir(dir: &Path) -> bool {
    let sockets: Vec<PathBuf> = read_dir_paths(dir)
        .into_iter()
        .filter(|p| is_socket(p))
        .collect();
    !sockets.is_empty() && sockets.iter().all(|s| nobody_listens(s))
}

fn read_dir_paths(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// A Unix socket whose listener is gone refuses a connection; a live one accepts it
/// (or queues it, when its one client is already connected).
fn nobody_listens(socket: &Path) -> bool {
    matches!(
        std::os::unix::net::UnixStream::connect(socket),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// The pid in a run directory's name, `run-<time>-<pid>`.
fn run_pid(run: &Path) -> Option<u32> {
    let name = run.file_name()?.to_str()?;
    let rest = name.strip_prefix("run-")?;
    rest.rsplit_once('-')?.1.parse().ok()
}

/// Every file some process on the machine (that this user may look at) has open.
fn open_files() -> std::collections::HashSet<PathBuf> {
    let mut open = std::collections::HashSet::new();
    for proc_dir in read_dir_paths(Path::new("/proc")) {
        for fd in read_dir_paths(&proc_dir.join("fd")) {
            if let Ok(target) = std::fs::read_link(&fd) {
                open.insert(target);
            }
        }
    }
    open
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_killed_runs_sockets_and_overlay_go_and_a_live_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let lab = tempfile::tempdir().unwrap();
        // A QMP directory whose QEMU was killed: the socket file is left, nobody listens.
        let dead = tmp.path().join("sal-qemu-dead");
        std::fs::create_dir(&dead).unwrap();
        drop(UnixListener::bind(dead.join("qmp.sock")).unwrap());
        // An ssh master that is alive.
        let live = tmp.path().join("sal-ssh-live");
        std::fs::create_dir(&live).unwrap();
        let _listener = UnixListener::bind(live.join("c")).unwrap();
        // A directory still being set up (no socket yet), and someone else's.
        std::fs::create_dir(tmp.path().join("sal-qemu-new")).unwrap();
        let other = tmp.path().join("other-dead");
        std::fs::create_dir(&other).unwrap();
        drop(UnixListener::bind(other.join("s")).unwrap());

        // A run whose process is gone (pid beyond pid_max), an overlay older than the
        // grace period; and this process's own run with the same.
        let old = std::time::SystemTime::now() - OVERLAY_GRACE * 2;
        let overlay = |run: &str| {
            let t = lab.path().join(run).join("echo-tcp4--debian-13--crun");
            std::fs::create_dir_all(&t).unwrap();
            let disk = t.join("disk.qcow2");
            let f = std::fs::File::create(&disk).unwrap();
            f.set_modified(old).unwrap();
            disk
        };
        let orphan = overlay("run-1795000000-99999999");
        // A dead run's overlay that some process still has open.
        let held = overlay("run-1795000002-99999997");
        let _holder = std::fs::File::open(&held).unwrap();
        let mine = overlay(&format!("run-1795000000-{}", std::process::id()));
        // A fresh overlay of a dead run: within the grace period.
        let fresh_dir = lab.path().join("run-1795000001-99999998").join("t");
        std::fs::create_dir_all(&fresh_dir).unwrap();
        std::fs::write(fresh_dir.join("disk.qcow2"), b"").unwrap();

        let swept = sweep_killed_runs(tmp.path(), lab.path());
        assert_eq!(swept.tmp_dirs, vec![dead.clone()]);
        assert_eq!(swept.overlays, vec![orphan.clone()]);
        assert!(!dead.exists() && !orphan.exists());
        assert!(live.join("c").exists() && mine.exists() && held.exists());
        assert!(tmp.path().join("sal-qemu-new").exists() && other.exists());
        assert!(fresh_dir.join("disk.qcow2").exists());
        // The trial directory itself (its logs) stays.
        assert!(orphan.parent().unwrap().exists());
    }
}
