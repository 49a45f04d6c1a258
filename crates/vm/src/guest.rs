//! Guest control over ssh: one multiplexed connection (ControlMaster) per guest, so a
//! command costs ~65 ms instead of the ~1.3 s of a fresh ssh session under TCG. The
//! master is a child process the `Guest` owns (`ssh -M -N`, not one forked off by
//! `ControlPersist`), so it dies with the guest, with this process (`PR_SET_PDEATHSIG`)
//! and on Ctrl-C, and never outlives a run. Commands
//! run as root, or as the test user inside its lingering user manager's environment.
//! Every command and its output is appended to the trial's command log.

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

/// A systemd manager in the guest: the test user's (`systemctl --user`) or the system's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    User,
    System,
}

impl Manager {
    /// The `systemctl` that talks to this manager.
    pub fn systemctl(self) -> &'static str {
        match self {
            Manager::User => "systemctl --user",
            Manager::System => "systemctl",
        }
    }
}

/// The alias the pinned host key is recorded under, whatever port the guest is on.
pub const HOST_ALIAS: &str = "socket-activation-lab-guest";

/// A file for [`Guest::write_files`]: owned by `owner` (root when `None`), its parent
/// directories created likewise.
#[derive(Debug, Clone)]
pub struct GuestFile {
    pub path: String,
    pub content: Vec<u8>,
    pub owner: Option<String>,
    pub mode: u32,
}

/// What [`Guest::write_files`] prints once every file is written.
const FILES_WRITTEN: &str = "-- lab: files written --";

/// The shell (`set -e`) that writes `files` from stdin, and that stdin. Each process costs
/// a restored guest its translation under TCG, so the script runs few: a directory is
/// made only when missing (as its owner: `runuser` opens a PAM session), one `dd` a file,
/// then one `chown` an owner and one `chmod` a mode for all the files.
pub fn write_files_script(files: &[GuestFile]) -> (String, Vec<u8>) {
    let mut script = String::from("set -e\n");
    let mut stdin: Vec<u8> = Vec::new();
    let mut made: Vec<(String, Option<String>)> = Vec::new();
    let mut owners: Vec<(String, Vec<String>)> = Vec::new();
    let mut modes: Vec<(u32, Vec<String>)> = Vec::new();
    for f in files {
        let dir = Path::new(&f.path)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/".into());
        let p = quote(&f.path);
        let key = (dir.clone(), f.owner.clone());
        if !made.contains(&key) {
            let d = quote(&dir);
            script += &match &f.owner {
                None => format!("[ -d {d} ] || mkdir -p {d}\n"),
                Some(o) => format!("[ -d {d} ] || runuser -u {} -- mkdir -p {d}\n", quote(o)),
            };
            made.push(key);
        }
        // dd reads a pipe in short reads; fullblock makes it wait for the whole file.
        script += &match f.content.len() {
            0 => format!(": > {p}\n"),
            n => format!("dd of={p} bs={n} count=1 iflag=fullblock status=none\n"),
        };
        stdin.extend_from_slice(&f.content);
        if let Some(o) = &f.owner {
            add_to_group(&mut owners, o.clone(), p.clone());
        }
        add_to_group(&mut modes, f.mode, p);
    }
    for (o, paths) in owners {
        script += &format!("chown {}: {}\n", quote(&o), paths.join(" "));
    }
    for (m, paths) in modes {
        script += &format!("chmod {m:o} {}\n", paths.join(" "));
    }
    (script, stdin)
}

/// Adds `path` to the group of `key` in `groups`, which keep their first appearance's
/// order (so the script reads the same for the same files).
fn add_to_group<K: PartialEq>(groups: &mut Vec<(K, Vec<String>)>, key: K, path: String) {
    match groups.iter_mut().find(|(k, _)| *k == key) {
        Some((_, paths)) => paths.push(path),
        None => groups.push((key, vec![path])),
    }
}

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

/// How a prelude says it failed (exit 125), to tell that from the command's own failure.
const PRELUDE_FAILED: &str = "lab: before the command,";

/// Where the guest keeps the journal's position at the last mark ([`Since::Mark`]);
/// root's, on a tmpfs.
const MARK_CURSOR_FILE: &str = "/run/socket-activation-lab-journal-mark";

/// Where a journal read starts.
#[derive(Debug, Clone, Copy)]
pub enum Since<'a> {
    /// After this cursor.
    Cursor(&'a str),
    /// After the position the guest recorded at the last mark
    /// ([`Guest::mark_journal_with_next_command`]).
    Mark,
}

impl Since<'_> {
    /// The cursor as a shell word.
    fn shell(self) -> String {
        match self {
            Since::Cursor(c) => quote(c),
            Since::Mark => {
                format!("\"$(sed -n 's/^-- cursor: //p' {MARK_CURSOR_FILE})\"")
            }
        }
    }
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

    /// Writes `content` to `path` in the guest, owned by `owner` (root when `None`),
    /// creating parent directories owned likewise.
    pub fn write_file(
        &self,
        path: &str,
        content: &[u8],
        owner: Option<&str>,
        mode: u32,
    ) -> Result<()> {
        let file = GuestFile {
            path: path.to_string(),
            content: content.to_vec(),
            owner: owner.map(String::from),
            mode,
        };
        self.write_files(&[file], "").map(drop)
    }

    /// Writes several files in one round trip (each as [`Guest::write_file`] would), then
    /// runs `then` (as root) in the same shell: its output (stdout from after the files
    /// were written) and its exit status are returned, not judged; a file that could not
    /// be written is an error. The contents go one after the other through stdin, each
    /// read by `dd` to its exact length, so the commands log shows the paths and sizes,
    /// not the contents.
    pub fn write_files(&self, files: &[GuestFile], then: &str) -> Result<Output> {
        let (writes, stdin) = write_files_script(files);
        let script = format!("{writes}echo '{FILES_WRITTEN}'\nset +e\n{then}");
        let mut out = self.root_stdin(&script, Some(&stdin), Duration::from_secs(120))?;
        let Some(after) = out
            .stdout
            .split_once(&format!("{FILES_WRITTEN}\n"))
            .map(|(_, after)| after.to_string())
        else {
            let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
            bail!(
                "writing {} in the guest failed: {}",
                paths.join(", "),
                out.combined().trim()
            );
        };
        out.stdout = after;
        Ok(out)
    }

    /// Copies a host file into the guest.
    pub fn copy_in(&self, local: &Path, remote: &str, mode: u32) -> Result<()> {
        let data = std::fs::read(local).with_context(|| format!("reading {}", local.display()))?;
        self.write_file(remote, &data, None, mode)
    }

    /// Copies a guest file to the host, byte for byte.
    pub fn copy_out(&self, remote: &str, local: &Path, timeout: Duration) -> Result<()> {
        let shown = format!("cat {}", quote(remote));
        let file = std::fs::File::create(local)
            .with_context(|| format!("creating {}", local.display()))?;
        self.announce("root", &format!("{shown} > (host) {}", local.display()));
        let result = proc::run_to_file(self.ssh_command(&shown, &[]), file, timeout);
        self.record(&result);
        let out = result?;
        if !out.success() {
            let _ = std::fs::remove_file(local);
            bail!(
                "copying {remote} out of the guest failed: {}",
                out.stderr.trim()
            );
        }
        Ok(())
    }

    /// The kernel's boot id: changes with every boot.
    pub fn boot_id(&self) -> Result<String> {
        Ok(self
            .root_ok(
                "cat /proc/sys/kernel/random/boot_id",
                Duration::from_secs(30),
            )?
            .stdout
            .trim()
            .to_string())
    }

    /// After a restore the guest's clock sits at the time the state was saved. The next
    /// command sets it to the host's time (read as that command is sent) before it runs,
    /// in its round trip rather than one of its own (a round trip costs a restored guest
    /// 0.2-0.5 s under TCG); a clock that cannot be set is that command's error.
    pub fn set_clock_with_next_command(&self) {
        self.clock_behind.store(true, Ordering::SeqCst);
    }

    /// The shell that sets the clock to the host's time now.
    fn clock_prelude() -> Result<String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        Ok(format!(
            "date -u -s @{}.{:09} >/dev/null || {{ echo '{PRELUDE_FAILED} setting the clock failed' >&2; exit 125; }}",
            now.as_secs(),
            now.subsec_nanos()
        ))
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
            preludes.push(Self::clock_prelude()?);
        }
        if self.mark_pending.swap(false, Ordering::SeqCst) {
            preludes.push(format!(
                "journalctl -q -n 0 --show-cursor > {MARK_CURSOR_FILE} || {{ echo '{PRELUDE_FAILED} reading the journal position failed' >&2; exit 125; }}"
            ));
        }
        Ok(preludes)
    }

    /// A real reboot: waits for the old system to go, a new boot (new boot id) to answer
    /// on ssh, and the test user's lingering manager to have started (its sockets listen),
    /// as a user finds the machine who logs in once it has booted. The ssh server alone
    /// says nothing about the user manager: Dropbear answers seconds before it is up.
    pub fn reboot(&self, timeout: Duration, console: &Path) -> Result<()> {
        let before = self.boot_id()?;
        // The connection drops while the command runs: its result says nothing.
        let _ = proc::run(
            self.ssh_command("systemctl reboot", &[]),
            None,
            Duration::from_secs(30),
        );
        self.close_master();
        let deadline = Instant::now() + timeout;
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "the guest did not come back within {} s of `systemctl reboot`; see {}",
                    timeout.as_secs(),
                    console.display()
                );
            }
            self.wait_for_ssh(left, console, &mut || None)?;
            match self.boot_id() {
                Ok(id) if id != before => break,
                _ => self.close_master(),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let out = self.root(&self.user_manager_wait(), left.max(Duration::from_secs(1)))?;
        if !out.success() {
            bail!(
                "after the reboot, the test user's manager did not start: {}",
                out.combined().trim()
            );
        }
        Ok(())
    }

    /// Shell that waits while the test user lingers and its manager (user@UID.service) is
    /// neither active nor failed: an active user manager has reached its sockets.
    fn user_manager_wait(&self) -> String {
        let User { name, uid } = &self.user;
        format!(
            "u=user@{uid}.service; while [ -e /var/lib/systemd/linger/{name} ]; do \
             s=$(systemctl show -P ActiveState $u); \
             case $s in active) exit 0;; failed) echo \"$u failed\"; exit 1;; esac; \
             sleep 0.2; done"
        )
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

    /// Journal lines of user units, read as root: the messages the units' processes wrote
    /// (`_SYSTEMD_USER_UNIT=`) and the user manager's messages about them (`USER_UNIT=`).
    /// `systemctl ARGS` (`ARGS` already quoted) in `manager`.
    pub fn systemctl(&self, manager: Manager, args: &str, timeout: Duration) -> Result<Output> {
        let script = format!("{} {args}", manager.systemctl());
        match manager {
            Manager::User => self.user(&script, timeout),
            Manager::System => self.root(&script, timeout),
        }
    }

    /// `script` made to run, from a root shell, beside `manager`: as the test user for
    /// the user manager ([`Guest::as_user`]), as it is for the system's.
    pub fn beside_manager(&self, manager: Manager, script: String) -> String {
        match manager {
            Manager::User => self.as_user(&script),
            Manager::System => script,
        }
    }

    /// The last `lines` journal lines of `units` of `manager` (only those logged after
    /// `after`, when given), or why there are none. A user unit's lines are those
    /// it logged and those the user manager logged about it.
    pub fn unit_journal(
        &self,
        manager: Manager,
        units: &[&str],
        lines: usize,
        after: Option<Since>,
    ) -> String {
        let script = unit_journal_command(manager, units, Some(lines), after);
        self.root(&script, Duration::from_secs(60))
            .map(|o| o.combined())
            .unwrap_or_else(|e| format!("(journal unavailable: {e:#})"))
    }

    /// The last `lines` journal lines logged by the test user's processes (its user
    /// manager included), after `after` when given.
    pub fn user_journal(&self, lines: usize, after: Option<Since>) -> String {
        let script = journal_command(&format!("_UID={}", self.user.uid), Some(lines), after);
        self.root(&script, Duration::from_secs(60))
            .map(|o| o.combined())
            .unwrap_or_else(|e| format!("(journal unavailable: {e:#})"))
    }
}

/// The `journalctl` command (run as root) of [`Guest::unit_journal`]: the last `lines`
/// (all when `None`) logged by or about `units`, after `after` when given.
pub fn unit_journal_command(
    manager: Manager,
    units: &[&str],
    lines: Option<usize>,
    after: Option<Since>,
) -> String {
    let matches: Vec<String> = units
        .iter()
        .flat_map(|u| match manager {
            Manager::User => vec![
                format!("_SYSTEMD_USER_UNIT={}", quote(u)),
                format!("USER_UNIT={}", quote(u)),
            ],
            Manager::System => vec![format!("-u {}", quote(u))],
        })
        .collect();
    let matches = match manager {
        Manager::User => matches.join(" + "),
        Manager::System => matches.join(" "),
    };
    journal_command(&matches, lines, after)
}

/// `journalctl` with `matches`: the last `lines` (all when `None`), after `after` when
/// given.
///
/// Not `--after-cursor` with matches: before systemd 255 that skips the first matching
/// entry after the cursor (systemd issue 30288, fixed by PR 30336), so on debian-12 a
/// step's evidence lost its first line. `--cursor` starts at the cursor's own entry
/// instead, which is dropped when it is the first line shown (it was logged before the
/// step).
pub fn journal_command(matches: &str, lines: Option<usize>, after: Option<Since>) -> String {
    let Some(after) = after else {
        let lines = lines.map(|n| format!("-n {n} ")).unwrap_or_default();
        return format!("journalctl --no-pager -o short-monotonic {lines}{matches}");
    };
    let tail = lines.map(|n| format!(" | tail -n {n}")).unwrap_or_default();
    format!(
        "c={}; at=$(journalctl --no-pager -o short-monotonic --cursor=\"$c\" | head -n 1); \
         journalctl --no-pager -o short-monotonic --cursor=\"$c\" {matches} \
         | AT=\"$at\" awk 'NR == 1 && $0 == ENVIRON[\"AT\"] {{ next }} {{ print }}'{tail}",
        after.shell()
    )
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

    /// The window after a cursor, run by sh against a stand-in `journalctl` that prints
    /// the cursor's own entry first (with a backslash, which awk -v would mangle) when no
    /// match is given, and the matching entries otherwise.
    fn window(matching: &str) -> String {
        let fake = format!(
            "journalctl() {{ case \"$*\" in *UNIT*) printf '%s' {};; *) printf '%s\\n' 'cursor entry \\ x' 'other';; esac; }}; ",
            quote(matching)
        );
        let script = fake + &journal_command("UNIT=a", Some(2), Some(Since::Cursor("s=1;i=2")));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn a_window_after_a_cursor_drops_only_the_cursors_own_entry() {
        // The cursor's entry matched: it was logged before the step, so it goes.
        assert_eq!(
            window("cursor entry \\ x\nfirst\nsecond\n"),
            "first\nsecond\n"
        );
        // It did not match: the first matching entry after it stays (systemd 252's
        // --after-cursor lost this one).
        assert_eq!(window("first\nsecond\n"), "first\nsecond\n");
        // `lines` keeps the last ones.
        assert_eq!(window("a\nb\nc\n"), "b\nc\n");
        assert!(
            !journal_command("UNIT=a", None, Some(Since::Cursor("c"))).contains("--after-cursor")
        );
    }

    /// The clock's prelude and then a command, run by sh with `date` as given.
    fn after_clock_prelude(date: &str) -> std::process::Output {
        let script = format!(
            "date() {{ {date}; }}; {}\necho the command ran",
            Guest::clock_prelude().unwrap()
        );
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap()
    }

    #[test]
    fn the_clock_prelude_runs_the_command_after_it_or_stops_with_its_own_words() {
        let set = after_clock_prelude("echo \"set $*\" >&2");
        assert!(set.status.success());
        assert_eq!(String::from_utf8_lossy(&set.stdout), "the command ran\n");
        let asked = String::from_utf8_lossy(&set.stderr).into_owned();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let given: f64 = asked
            .trim()
            .strip_prefix("set -u -s @")
            .unwrap_or_else(|| panic!("{asked:?}"))
            .parse()
            .unwrap();
        assert!((now - given).abs() < 60.0, "{given} against {now}");

        let refused = after_clock_prelude("return 1");
        assert_eq!(refused.status.code(), Some(125));
        assert!(refused.stdout.is_empty());
        assert!(String::from_utf8_lossy(&refused.stderr).contains(PRELUDE_FAILED));
    }

    fn file(path: &str, content: &str, owner: Option<&str>, mode: u32) -> GuestFile {
        GuestFile {
            path: path.into(),
            content: content.as_bytes().to_vec(),
            owner: owner.map(String::from),
            mode,
        }
    }

    #[test]
    fn written_files_have_their_exact_contents_and_modes_in_new_directories() {
        let dir = tempfile::tempdir().unwrap();
        let at = |p: &str| dir.path().join(p).display().to_string();
        let files = [
            file(&at("a/b/one"), "first\n", None, 0o644),
            file(&at("a/b/two"), "", None, 0o600),
            file(&at("a/three"), "third, with 'quotes'", None, 0o755),
        ];
        let (script, stdin) = write_files_script(&files);
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&stdin).unwrap();
        assert!(child.wait().unwrap().success(), "{script}");
        use std::os::unix::fs::PermissionsExt;
        for (f, text) in files.iter().zip(["first\n", "", "third, with 'quotes'"]) {
            assert_eq!(std::fs::read_to_string(&f.path).unwrap(), text);
            let mode = std::fs::metadata(&f.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, f.mode, "{}", f.path);
        }
        // One chmod a mode, one mkdir a directory.
        assert_eq!(script.matches("chmod ").count(), 3, "{script}");
        assert_eq!(script.matches("mkdir -p").count(), 2, "{script}");
    }

    #[test]
    fn a_file_that_cannot_be_written_stops_the_script() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, "a file, not a directory").unwrap();
        let files = [file(
            &blocker.join("unit").display().to_string(),
            "x",
            None,
            0o644,
        )];
        let (script, _) = write_files_script(&files);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{script}echo after"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(!String::from_utf8_lossy(&out.stdout).contains("after"));
    }

    #[test]
    fn a_users_files_get_one_chown_and_their_directory_is_made_as_the_user_only_when_missing() {
        let files = [
            file(
                "/home/test/.config/systemd/user/a.socket",
                "a",
                Some("test"),
                0o644,
            ),
            file(
                "/home/test/.config/systemd/user/a.service",
                "b",
                Some("test"),
                0o644,
            ),
            file("/etc/systemd/system/b.service", "c", None, 0o644),
        ];
        let (script, stdin) = write_files_script(&files);
        assert_eq!(stdin, b"abc");
        assert!(script.contains(
            "[ -d /home/test/.config/systemd/user ] || runuser -u test -- mkdir -p /home/test/.config/systemd/user\n"
        ), "{script}");
        assert!(script.contains(
            "chown test: /home/test/.config/systemd/user/a.socket /home/test/.config/systemd/user/a.service\n"
        ), "{script}");
        assert_eq!(script.matches("chown ").count(), 1, "{script}");
        assert_eq!(script.matches("chmod 644 ").count(), 1, "{script}");
    }

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
