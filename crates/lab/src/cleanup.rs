//! What must not outlive an interrupted run. QEMU and every other child die with this
//! process (`PR_SET_PDEATHSIG`); files (trial overlays, half-built cache entries) are
//! registered here while they exist, and removed by the Ctrl-C/SIGTERM handler before
//! the process exits. Normal and panicking exits remove them through their owners' `Drop`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();

/// Installs the signal handler (once per process).
pub fn install_handler() {
    HANDLER.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            eprintln!("\ninterrupted: removing overlays and partial images");
            remove_all();
            // Children (qemu, ssh, mmdebstrap) are killed by the kernel when we exit.
            std::process::exit(130);
        });
    });
}

/// Registers a file or directory to remove if the run is interrupted.
pub fn register(path: &Path) {
    PATHS.lock().expect("cleanup lock").push(path.to_path_buf());
}

/// Forgets a path (it was removed or published by its owner).
pub fn unregister(path: &Path) {
    PATHS.lock().expect("cleanup lock").retain(|p| p != path);
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
