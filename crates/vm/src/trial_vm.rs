//! A trial's guest: a QEMU restored from the ready state ([`crate::ready`]) on an overlay
//! of its own, so trials run side by side from one read-only pair of files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};

use crate::events::Events;
use crate::guest::Guest;
use crate::image;
use crate::qemu::Qemu;
use crate::qemu::Ram;
use crate::ready::{RAM_FILE, Ready, STATE_FILE, vm_config};

/// A trial's overlay disk: registered for Ctrl-C from before it exists, removed when
/// dropped, so a start that fails at any step (QEMU, the saved state, ssh)
/// leaves no overlay behind.
struct Overlay(PathBuf);

impl Overlay {
    fn create(backing: &Path, path: PathBuf) -> Result<Overlay> {
        crate::cleanup::register(&path);
        let overlay = Overlay(path);
        image::overlay(backing, &overlay.0)?;
        Ok(overlay)
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        crate::cleanup::unregister(&self.0);
    }
}

/// A trial's guest: a QEMU restored from the ready state on its own overlay.
/// Dropping it closes ssh, quits QEMU and deletes the overlay (logs stay).
pub struct TrialVm {
    // Fields drop in this order after `Drop::drop`: ssh, QEMU, then the overlay QEMU held.
    pub guest: Guest,
    pub qemu: Qemu,
    pub dir: PathBuf,
    _overlay: Overlay,
}

impl TrialVm {
    pub fn start(ready: &Ready, dir: &Path, events: &Events) -> Result<TrialVm> {
        std::fs::create_dir_all(dir)?;
        // Declared before QEMU, so on an early return QEMU is dropped first.
        let overlay = Overlay::create(&ready.dir.join("disk.qcow2"), dir.join("disk.qcow2"))?;
        let config = vm_config(
            &ready.base,
            &ready.machine,
            &overlay.0,
            dir,
            Ram::CopyOf(ready.dir.join(RAM_FILE)),
            Some(ready.dir.join(STATE_FILE)),
        )?;
        let console = config.console_log.clone();
        let step = events.step(&ready.target.name, "restoring the ready state");
        let mut qemu = Qemu::start(config, &dir.join("qemu.log"))?;
        let status = qemu.qmp.wait_incoming(Duration::from_secs(120))?;
        if status != "paused" && status != "running" {
            bail!(
                "after loading the saved state the VM is {status:?}; see {}",
                dir.join("qemu.log").display()
            );
        }
        if status == "paused" {
            qemu.qmp.execute("cont", None)?;
        }
        let qemu_log = dir.join("qemu.log");
        let guest = Guest::connect(
            qemu.config.ssh_port,
            ready.base.keys.clone(),
            ready.target.user.clone(),
            Duration::from_secs(90),
            &console,
            Some(&dir.join("commands.log")),
            &mut || qemu.gone(&qemu_log),
        )?;
        guest.set_clock_with_next_command();
        step.done();
        Ok(TrialVm {
            guest,
            qemu,
            dir: dir.to_path_buf(),
            _overlay: overlay,
        })
    }

    pub fn console_log(&self) -> PathBuf {
        self.qemu.config.console_log.clone()
    }

    /// What became of QEMU, when a trial's step failed for a reason outside the guest: it
    /// exited (killed, crashed: with the end of its log), or it does not answer QMP (a
    /// stopped or hung QEMU), or it is not running the guest. `None` when it is fine.
    pub fn diagnose(&mut self) -> Option<String> {
        let log = self.dir.join("qemu.log");
        if let Some(status) = self.qemu.exited() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            return Some(format!(
                "QEMU exited during the trial ({status}); {}:\n{}",
                log.display(),
                crate::proc::tail(tail.trim(), 5)
            ));
        }
        self.qemu.qmp.set_timeout(Duration::from_secs(3));
        let answer = self.qemu.qmp.status();
        self.qemu.qmp.set_timeout(Duration::from_secs(30));
        match answer {
            Ok(status) if status == "running" => None,
            Ok(status) => Some(format!("QEMU is {status:?}, not running the guest")),
            Err(e) => Some(format!(
                "QEMU does not answer QMP within 3 s (stopped or hung): {e:#}"
            )),
        }
    }
}

impl Drop for TrialVm {
    fn drop(&mut self) {
        // QEMU first (it holds the overlay); the overlay goes when its field drops.
        self.qemu.shutdown();
    }
}
