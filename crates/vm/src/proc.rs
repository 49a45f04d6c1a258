//! External processes with a deadline. Every one is killed if it outlives its timeout, and
//! (through `PR_SET_PDEATHSIG`) if this process dies first, so Ctrl-C, a panic or a kill
//! leaves no qemu, ssh or mmdebstrap behind.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Makes the kernel kill the child when its parent dies.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout and stderr together, for logs and error messages.
    pub fn combined(&self) -> String {
        let mut s = self.stdout.clone();
        if !self.stderr.is_empty() {
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str(&self.stderr);
        }
        s
    }
}

pub fn display(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(
        cmd.get_args()
            .map(|a: &OsStr| a.to_string_lossy().into_owned()),
    );
    parts.join(" ")
}

/// Runs `cmd` to completion, feeding `stdin`, with a deadline. A timeout is an error that
/// names the command and the limit.
pub fn run(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    run_with(cmd, stdin, None, false, timeout)
}

/// Like [`run`], in a process group of its own, for a program that signals its whole
/// group: mmdebstrap sends SIGHUP to `-getpgrp()` when writing its tarball fails (a full
/// disk), which in our group kills the lab, cargo and the user's shell job. A terminal's
/// Ctrl-C no longer reaches such a group, so the interrupt handler forwards SIGTERM to it
/// (`cleanup::register_group`); a timeout kills the whole group.
pub fn run_own_group(mut cmd: Command, timeout: Duration) -> Result<Output> {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0);
    run_with(cmd, None, None, true, timeout)
}

/// Like [`run`], but stdout goes to `file` byte for byte (binary data, large copies); the
/// returned `stdout` is empty.
pub fn run_to_file(cmd: Command, file: std::fs::File, timeout: Duration) -> Result<Output> {
    run_with(cmd, None, Some(file), false, timeout)
}

/// How a command run by [`run_or_kill`] ended.
#[derive(Debug)]
pub enum Ended {
    Exited(Output),
    /// Killed at its deadline; what it had printed by then.
    Killed {
        stdout: String,
        stderr: String,
    },
}

/// Like [`run`], but a command still running at its deadline is killed and its output
/// returned, for a caller to whom that is an answer (a probe that hangs where it fails).
pub fn run_or_kill(cmd: Command, timeout: Duration) -> Result<Ended> {
    run_ending(cmd, None, None, false, timeout)
}

fn run_with(
    cmd: Command,
    stdin: Option<&[u8]>,
    stdout: Option<std::fs::File>,
    own_group: bool,
    timeout: Duration,
) -> Result<Output> {
    let shown = display(&cmd);
    match run_ending(cmd, stdin, stdout, own_group, timeout)? {
        Ended::Exited(out) => Ok(out),
        Ended::Killed { stderr, .. } => bail!(
            "`{shown}` did not finish within {:.0} s and was killed{}",
            timeout.as_secs_f64(),
            match tail(stderr.trim(), 5) {
                t if t.is_empty() => String::new(),
                t => format!("; its stderr ended:\n{t}"),
            }
        ),
    }
}

fn run_ending(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    stdout: Option<std::fs::File>,
    // The child leads a process group of its own (`run_own_group`).
    own_group: bool,
    timeout: Duration,
) -> Result<Ended> {
    let shown = display(&cmd);
    let to_file = stdout.is_some();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(stdout.map_or_else(Stdio::piped, Stdio::from))
    .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting `{shown}`"))?;
    if own_group {
        crate::cleanup::register_group(child.id());
    }
    let _unregister = Unregister(own_group.then_some(child.id()));
    let feeder = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out_reader = child.stdout.take().map(reader);
    debug_assert_eq!(out_reader.is_none(), to_file);
    let err_reader = reader(child.stderr.take().expect("piped stderr"));
    let status = wait_deadline(&mut child, timeout);
    let Some(status) = status else {
        if own_group {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        // A process the command left behind (ssh's master) may hold the pipes open: the
        // readers get a second, then what they have is dropped with them.
        let grace = Duration::from_secs(1);
        return Ok(Ended::Killed {
            stdout: out_reader
                .map(|r| joined_within(r, grace))
                .unwrap_or_default(),
            stderr: joined_within(err_reader, grace),
        });
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Ok(Ended::Exited(Output {
        status,
        stdout: out_reader
            .map(|r| r.join().unwrap_or_default())
            .unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }))
}

/// What a reader thread read, if it ends within `limit`; else nothing (the thread is left
/// to end with its pipe).
fn joined_within(reader: std::thread::JoinHandle<String>, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if reader.is_finished() {
        reader.join().unwrap_or_default()
    } else {
        String::new()
    }
}

/// Like [`run`], but a non-zero exit is an error with the output in it.
pub fn check(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let shown = display(&cmd);
    let out = run(cmd, stdin, timeout)?;
    if !out.success() {
        bail!(
            "`{shown}` failed ({}):\n{}",
            out.status,
            tail(&out.combined(), 40)
        );
    }
    Ok(out)
}

/// Forgets a registered process group when its leader has been waited for.
struct Unregister(Option<u32>);

impl Drop for Unregister {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            crate::cleanup::unregister_group(pgid);
        }
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` until `timeout`; `None` if it is still running.
pub fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(2);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(50));
            }
            Err(_) => return None,
        }
    }
}

/// Whether `command --version` runs and succeeds (within 10 s): the tool is installed.
pub fn runs(command: &str) -> bool {
    let mut c = Command::new(command);
    c.arg("--version");
    run(c, None, Duration::from_secs(10)).is_ok_and(|out| out.success())
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    (unsafe { libc::geteuid() }) == 0
}

/// `s` quoted for a POSIX shell (the guest's, or `sh -c` for QEMU's `exec:` URIs).
/// Scenarios, paths and commands never hold a NUL: scenario files are checked for it
/// when they load.
pub fn quote(s: &str) -> String {
    shlex::try_quote(s)
        .expect("no NUL in a shell word")
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2; exit 3"]);
        let o = run(c, None, Duration::from_secs(5)).unwrap();
        assert_eq!(
            (o.stdout.as_str(), o.stderr.as_str(), o.code()),
            ("out\n", "err\n", Some(3))
        );
    }

    #[test]
    fn feeds_stdin() {
        let o = check(Command::new("cat"), Some(b"abc"), Duration::from_secs(5)).unwrap();
        assert_eq!(o.stdout, "abc");
    }

    #[test]
    fn timeout_kills_and_names_the_command() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let e = run(c, None, Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`sleep 30` did not finish within 0 s"), "{e}");
    }

    #[test]
    fn stdout_to_a_file_keeps_binary_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut c = Command::new("printf");
        c.arg("a\\377\\000b");
        let file = std::fs::File::create(&path).unwrap();
        let o = run_to_file(c, file, Duration::from_secs(5)).unwrap();
        assert!(o.success() && o.stdout.is_empty());
        assert_eq!(std::fs::read(&path).unwrap(), b"a\xff\x00b");
    }

    #[test]
    fn check_reports_failure_output() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo boom >&2; exit 1"]);
        let e = check(c, None, Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("boom"), "{e}");
    }
}
