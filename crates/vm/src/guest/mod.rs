//! Guest control over ssh: one multiplexed connection (ControlMaster) per guest, so a
//! command costs ~65 ms instead of the ~1.3 s of a fresh ssh session under TCG. The
//! master is a child process the `Guest` owns (`ssh -M -N`, not one forked off by
//! `ControlPersist`), so it dies with the guest, with this process (`PR_SET_PDEATHSIG`)
//! and on Ctrl-C, and never outlives a run. Commands
//! run as root, or as the test user inside its lingering user manager's environment.
//! Every command and its output is appended to the trial's command log.
//!
//! [`script`] builds the shell the guest runs (pure, tested without a guest): files to
//! write, journal reads, preludes. `files.rs` and `systemd.rs` add the methods that write
//! files and drive the guest's systemd.

mod files;
pub mod script;
mod systemd;

pub use script::{
    GuestFile, Manager, Since, journal_command, unit_journal_command, write_files_script,
};

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc::{self, Output, quote};
use crate::target::User;
use script::{MARK_CURSOR_FILE, PRELUDE_FAILED, clock_prelude};

/// The key pair to log in and the guest's pinned host key.
#[derive(Debug, Clone)]
pub struct SshKeys {
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
}

impl SshKeys {
    /// Generates the login key and the guest's host key (pinned in `known_hosts`) in
    /// `dir`, where a base image keeps them.
    pub fn generate(dir: &Path) -> Result<()> {
        for name in ["id_ed25519", "host_ed25519"] {
            let mut c = Command::new("ssh-keygen");
            c.args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "socket-activation-lab",
                "-f",
            ])
            .arg(dir.join(name));
            proc::check(c, None, Duration::from_secs(30))?;
        }
        let host_pub = std::fs::read_to_string(dir.join("host_ed25519.pub"))?;
        let mut parts = host_pub.split_whitespace();
        let (kind, key) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        std::fs::write(
            dir.join("known_hosts"),
            format!("{HOST_ALIAS} {kind} {key}\n"),
        )?;
        Ok(())
    }
}

/// The alias the pinned host key is recorded under, whatever port the guest is on.
pub const HOST_ALIAS: &str = "socket-activation-lab-guest";

pub struct Guest {
    port: u16,
    keys: SshKeys,
    pub user: User,
    control_dir: tempfile::TempDir,
    master: Mutex<Option<Child>>,
    log: Mutex<Option<File>>,
    /// Set after a restore: the next command sets the clock first
    /// ([`Guest::set_clock_with_next_command`]).
    clock_behind: AtomicBool,
    /// Set by a mark: the next command records the journal's position first
    /// ([`Guest::mark_journal_with_next_command`]).
    mark_pending: AtomicBool,
}

impl Guest {
    /// Connects to the guest's ssh server on `port`, retrying until `timeout`, or until `gone`
    /// says why the guest will never answer (its QEMU exited). `console` is named in the
    /// timeout error, since it is where a boot that went wrong shows why.
    pub fn connect(
        port: u16,
        keys: SshKeys,
        user: User,
        timeout: Duration,
        console: &Path,
        log: Option<&Path>,
        gone: &mut dyn FnMut() -> Option<String>,
    ) -> Result<Guest> {
        // Unix socket paths are limited to 108 bytes: keep the control socket short.
        let control_dir = tempfile::Builder::new()
            .prefix("sal-ssh-")
            .tempdir_in("/tmp")?;
        crate::cleanup::register(control_dir.path());
        let log = match log {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => None,
        };
        let guest = Guest {
            port,
            keys,
            user,
            control_dir,
            master: Mutex::new(None),
            log: Mutex::new(log),
            clock_behind: AtomicBool::new(false),
            mark_pending: AtomicBool::new(false),
        };
        guest.wait_for_ssh(timeout, console, gone)?;
        Ok(guest)
    }

    /// Starts the master connection and waits until its control socket is up (it is
    /// created once the master has logged in). `Err` with ssh's words when it gave up.
    fn start_master(&self, timeout: Duration) -> Result<()> {
        self.close_master();
        let mut cmd = Command::new("ssh");
        // ssh keeps the first value given for an option: these go before the shared
        // arguments (whose ControlMaster=no is for the clients).
        cmd.args(["-o", "ControlMaster=yes", "-o", "ConnectTimeout=3"])
            .args(self.ssh_args())
            .arg("-N")
            .arg("root@127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        proc::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("starting ssh")?;
        let deadline = Instant::now() + timeout;
        loop {
            if self.control_path().exists() {
                *self.master.lock().expect("master lock") = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut why = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut why);
                }
                bail!("ssh exited ({status}): {}", why.trim());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("ssh did not log in within {} s", timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_for_ssh(
        &self,
        timeout: Duration,
        console: &Path,
        gone: &mut dyn FnMut() -> Option<String>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(why) = gone() {
                bail!(
                    "the guest cannot answer on ssh: {why}; see the console log {}",
                    console.display()
                );
            }
            // The control socket appears only once the master has logged in: the
            // guest answers, and no further round trip is needed to know it.
            match self.start_master(Duration::from_secs(15)) {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "timed out after {} s waiting for ssh on 127.0.0.1:{} (last: {}); see the console log {}",
            timeout.as_secs(),
            self.port,
            last.trim(),
            console.display()
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn control_path(&self) -> PathBuf {
        self.control_dir.path().join("c")
    }

    /// The ssh arguments that reach this guest (for `vm ssh` and for scp-like use).
    pub fn ssh_args(&self) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            self.keys.identity.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("HostKeyAlias={HOST_ALIAS}"),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.keys.known_hosts.display()),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            "ControlMaster=no".into(),
            "-o".into(),
            format!("ControlPath={}", self.control_path().display()),
            "-o".into(),
            "ServerAliveInterval=5".into(),
            // A loopback link to a throwaway guest: the cheapest key exchange first (the
            // defaults stay behind it). A restored guest translates every code path it runs
            // afresh under TCG: login measured here 0.60-0.78 s against 0.76-0.88 s with
            // the client's default sntrup761x25519, six interleaved restores each.
            "-o".into(),
            "KexAlgorithms=^curve25519-sha256".into(),
        ]
    }

    fn ssh_command(&self, script: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(self.ssh_args())
            .args(extra)
            .arg("root@127.0.0.1")
            .arg("--")
            .arg(script);
        cmd
    }

    /// Logs a command before it runs, so a command that hangs or is cut off (a killed
    /// guest) is in the log too.
    fn announce(&self, who: &str, script: &str) {
        let mut log = self.log.lock().expect("log lock");
        if let Some(f) = log.as_mut() {
            let _ = writeln!(f, "$ [{who}] {script}");
            let _ = f.flush();
        }
    }

    /// Writes a heading line (`## ...`) into the command log, so a reader (and the HTML
    /// report) can tell which commands belong to which step.
    pub fn log_heading(&self, text: &str) {
        let mut log = self.log.lock().expect("log lock");
        if let Some(f) = log.as_mut() {
            let _ = writeln!(f, "## {text}");
            let _ = f.flush();
        }
    }

    /// Logs what an announced command gave.
    fn record(&self, result: &Result<Output>) {
        let mut log = self.log.lock().expect("log lock");
        if let Some(f) = log.as_mut() {
            match result {
                Ok(o) => {
                    let _ = write!(f, "{}", o.combined());
                    let _ = writeln!(
                        f,
                        "[exit {} after {:.2} s]\n",
                        o.code().map_or("signal".into(), |c| c.to_string()),
                        o.elapsed.as_secs_f64()
                    );
                }
                Err(e) => {
                    let _ = writeln!(f, "[error: {e:#}]\n");
                }
            }
        }
    }

    /// Runs `remote` over ssh and records it as `shown`, run by `who`. A non-zero exit is
    /// returned, not an error; ssh's own failure (255: the connection) is an error.
    fn exec(
        &self,
        who: &str,
        remote: &str,
        shown: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output> {
        let preludes = self.take_preludes()?;
        for p in &preludes {
            self.announce("root", p);
        }
        self.announce(who, shown);
        let script: String = preludes
            .iter()
            .map(|p| format!("{p}\n"))
            .collect::<String>()
            + remote;
        let result = proc::run(self.ssh_command(&script, &[]), stdin, timeout);
        self.record(&result);
        let out = result.with_context(|| format!("`{shown}` as {who}"))?;
        if out.code() == Some(255) {
            bail!(
                "ssh to the guest failed running `{shown}` as {who}: {}",
                out.stderr.trim()
            );
        }
        if !preludes.is_empty() && out.code() == Some(125) && out.stderr.contains(PRELUDE_FAILED) {
            bail!("running `{shown}` as {who}: {}", out.stderr.trim());
        }
        Ok(out)
    }

    fn succeeded(out: Output, who: &str, shown: &str) -> Result<Output> {
        if !out.success() {
            bail!(
                "`{shown}` failed in the guest as {who} ({}):\n{}",
                out.status,
                proc::tail(&out.combined(), 30)
            );
        }
        Ok(out)
    }

    /// Runs `script` with bash as root. A non-zero exit is returned, not an error.
    pub fn root(&self, script: &str, timeout: Duration) -> Result<Output> {
        self.root_stdin(script, None, timeout)
    }

    pub fn root_stdin(
        &self,
        script: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output> {
        self.exec("root", script, script, stdin, timeout)
    }

    /// Like [`Guest::root`], but a non-zero exit is an error carrying the output.
    pub fn root_ok(&self, script: &str, timeout: Duration) -> Result<Output> {
        Self::succeeded(self.root(script, timeout)?, "root", script)
    }

    /// The shell prefix that runs a command as the test user in its user manager's
    /// environment (the manager runs by lingering; XDG_RUNTIME_DIR and the user bus are
    /// what `systemctl --user` and rootless podman need).
    pub fn as_user(&self, script: &str) -> String {
        let User { name, uid } = &self.user;
        format!(
            "cd ~{name} && exec runuser -u {name} -- env XDG_RUNTIME_DIR=/run/user/{uid} DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/bus HOME=$(getent passwd {name} | cut -d: -f6) USER={name} LOGNAME={name} PATH=/usr/local/bin:/usr/bin:/bin sh -c {}",
            quote(script)
        )
    }

    /// Runs `script` as the test user. A non-zero exit is returned, not an error.
    pub fn user(&self, script: &str, timeout: Duration) -> Result<Output> {
        self.exec(
            &self.user.name,
            &self.as_user(script),
            script,
            None,
            timeout,
        )
    }

    pub fn user_ok(&self, script: &str, timeout: Duration) -> Result<Output> {
        Self::succeeded(self.user(script, timeout)?, &self.user.name, script)
    }

    /// After a restore the guest's clock sits at the time the state was saved. The next
    /// command sets it to the host's time (read as that command is sent) before it runs,
    /// in its round trip rather than one of its own (a round trip costs a restored guest
    /// 0.2-0.5 s under TCG); a clock that cannot be set is that command's error.
    pub fn set_clock_with_next_command(&self) {
        self.clock_behind.store(true, Ordering::SeqCst);
    }

    /// Marks the journal: the next command first records the journal's position in the
    /// guest (for [`Since::Mark`]), in its round trip rather than one of its own. A read
    /// since the mark gets what was logged from that command on.
    pub fn mark_journal_with_next_command(&self) {
        self.mark_pending.store(true, Ordering::SeqCst);
    }

    /// What the next command runs first, as root: the clock after a restore, the journal's
    /// position at a mark. Each says so and exits 125 when it fails.
    fn take_preludes(&self) -> Result<Vec<String>> {
        let mut preludes = Vec::new();
        if self.clock_behind.swap(false, Ordering::SeqCst) {
            preludes.push(clock_prelude()?);
        }
        if self.mark_pending.swap(false, Ordering::SeqCst) {
            preludes.push(format!(
                "journalctl -q -n 0 --show-cursor > {MARK_CURSOR_FILE} || {{ echo '{PRELUDE_FAILED} reading the journal position failed' >&2; exit 125; }}"
            ));
        }
        Ok(preludes)
    }

    /// Ends the master connection: cleanly (`-O exit`, so the guest's ssh server ends the
    /// session before, say, the ready state is saved), killed if it does not go.
    fn close_master(&self) {
        if let Some(mut child) = self.master.lock().expect("master lock").take() {
            if self.control_path().exists() {
                let mut cmd = Command::new("ssh");
                cmd.args(self.ssh_args())
                    .args(["-O", "exit", "root@127.0.0.1"]);
                let _ = proc::run(cmd, None, Duration::from_secs(10));
            }
            if proc::wait_deadline(&mut child, Duration::from_secs(2)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_file(self.control_path());
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.close_master();
        crate::cleanup::unregister(self.control_dir.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest that has never connected: enough for what the next command runs first.
    fn unconnected() -> Guest {
        Guest {
            port: 0,
            keys: SshKeys {
                identity: "/nonexistent".into(),
                known_hosts: "/nonexistent".into(),
            },
            user: User {
                name: "test".into(),
                uid: 1000,
            },
            control_dir: tempfile::tempdir().unwrap(),
            master: Mutex::new(None),
            log: Mutex::new(None),
            clock_behind: AtomicBool::new(false),
            mark_pending: AtomicBool::new(false),
        }
    }

    #[test]
    fn preludes_go_with_the_next_command_only() {
        let g = unconnected();
        assert!(g.take_preludes().unwrap().is_empty());
        g.set_clock_with_next_command();
        g.mark_journal_with_next_command();
        let first = g.take_preludes().unwrap();
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(first[0].starts_with("date -u -s @"), "{first:?}");
        assert!(
            first[1].starts_with("journalctl -q -n 0 --show-cursor"),
            "{first:?}"
        );
        assert!(g.take_preludes().unwrap().is_empty());
    }

    #[test]
    fn a_read_since_the_mark_begins_at_the_position_the_next_command_recorded() {
        let g = unconnected();
        g.mark_journal_with_next_command();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cursor").display().to_string();
        let prelude = g.take_preludes().unwrap().remove(0);
        let script = format!(
            "journalctl() {{ printf '%s\\n' '-- cursor: s=1;i=2;x=a\\b'; }}\n{}\nprintf '%s' {}",
            prelude.replace(MARK_CURSOR_FILE, &file),
            Since::Mark.shell().replace(MARK_CURSOR_FILE, &file)
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "s=1;i=2;x=a\\b");
    }
}
