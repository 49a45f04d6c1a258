//! One QEMU guest: its command line from the pure functions of [`args`](mod@args), the host's
//! QEMU and accelerator from [`host`], and the running process, owned by [`Qemu`], whose
//! `Drop` stops it.

pub mod args;
pub mod host;

pub use args::*;
pub use host::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::proc;
use crate::qmp::Qmp;
use crate::target::Target;

impl MachineSpec {
    /// `target`'s hardware. The accelerator is decided by booting `kernel` (direct kernel
    /// boot) or, for a disk that boots itself, from the host alone.
    pub fn for_target(target: &Target, kernel: Option<&Path>) -> MachineSpec {
        MachineSpec {
            accel: match kernel {
                Some(k) => decide_accel(k),
                None => detect_accel(),
            },
            memory_mib: target.machine.memory_mib,
            cpus: target.machine.cpus,
        }
        .sized_for(guests_at_once(), host_cores())
    }
}

/// A running QEMU. Dropping it quits QEMU (QMP `quit`, then SIGKILL).
pub struct Qemu {
    child: Option<Child>,
    pub qmp: Qmp,
    pub config: VmConfig,
    /// Holds the QMP socket; removed after QEMU is gone (fields drop after `Drop::drop`).
    _socket_dir: SocketDir,
}

/// A short private directory for QEMU's unix sockets: a socket path must fit in 107 bytes,
/// which a run or cache directory under a workspace (`/home/runner/work/...`) does not.
struct SocketDir(tempfile::TempDir);

impl SocketDir {
    fn new() -> Result<SocketDir> {
        let dir = tempfile::Builder::new()
            .prefix("sal-qemu-")
            .tempdir()
            .context("creating a directory for QEMU's sockets")?;
        crate::cleanup::register(dir.path());
        let socket_dir = SocketDir(dir);
        let qmp = socket_dir.qmp();
        let len = qmp.as_os_str().len();
        if len > 107 {
            bail!(
                "the QMP socket path {} is {len} bytes; unix sockets allow 107: set TMPDIR to a shorter directory",
                qmp.display()
            );
        }
        Ok(socket_dir)
    }

    fn qmp(&self) -> PathBuf {
        self.0.path().join("qmp.sock")
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        crate::cleanup::unregister(self.0.path());
    }
}

impl Qemu {
    /// Starts QEMU; it is also killed if this process dies. Its stderr goes to `log`.
    pub fn start(mut config: VmConfig, log: &Path) -> Result<Qemu> {
        let socket_dir = SocketDir::new()?;
        let qmp_socket = socket_dir.qmp();
        let mut cmd = Command::new(QEMU);
        cmd.args(args(&config, &qmp_socket));
        let log_file = std::fs::File::create(log)?;
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        proc::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
        let connected = Qmp::connect(&qmp_socket, Duration::from_secs(20)).and_then(|mut q| {
            if config.ssh_port == 0 {
                let usernet = q.human("info usernet")?;
                config.ssh_port = forwarded_port(&usernet, 22).with_context(|| {
                    format!("QEMU's `info usernet` shows no forward to port 22:\n{usernet}")
                })?;
            }
            if let Some(state) = &config.incoming {
                if config.ram != Ram::Anonymous {
                    q.ignore_shared_memory()?;
                }
                let uri = state_uri(state, StateFile::Load, running_release());
                q.execute("migrate-incoming", Some(serde_json::json!({ "uri": uri })))
                    .with_context(|| format!("loading the saved state {}", state.display()))?;
            }
            Ok(q)
        });
        let qmp = match connected {
            Ok(q) => q,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = std::fs::read_to_string(log).unwrap_or_default();
                return Err(e.context(format!(
                    "QEMU did not come up:\n{}",
                    proc::tail(&stderr, 20)
                )));
            }
        };
        Ok(Qemu {
            child: Some(child),
            qmp,
            config,
            _socket_dir: socket_dir,
        })
    }

    /// `Some(status)` once QEMU has exited.
    /// `Some(why)` once QEMU has exited: its status and the end of its `log`.
    pub fn gone(&mut self, log: &Path) -> Option<String> {
        let status = self.exited()?;
        let text = std::fs::read_to_string(log).unwrap_or_default();
        Some(format!(
            "QEMU exited ({status}): {}",
            crate::proc::tail(text.trim(), 5)
        ))
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Asks QEMU to quit and waits for it.
    pub fn quit(mut self) -> Result<()> {
        self.shutdown();
        Ok(())
    }

    /// Quits QEMU and waits for it (killing it after 5 s); later calls do nothing. A
    /// stopped or hung QEMU does not answer QMP: the quit waits 5 s for a reply, not 30.
    pub fn shutdown(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.qmp.set_timeout(Duration::from_secs(5));
            let _ = self.qmp.execute("quit", None);
            if proc::wait_deadline(&mut child, Duration::from_secs(5)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.shutdown();
    }
}
