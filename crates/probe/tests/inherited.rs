//! `echo-probe inherited` with real fds handed over as systemd's `OpenFile=` does: a file
//! opened read-only and a stream socket already connected to a server.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_echo-probe");

/// A Unix stream server that answers each connection with `reply(request)`.
fn server(dir: &std::path::Path, reply: fn(&str) -> String) -> std::path::PathBuf {
    let path = dir.join("server.sock");
    let l = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            let _ = s.write_all(reply(&text).as_bytes());
        }
    });
    path
}

/// `echo-probe inherited` with `fds` at 3.. and LISTEN_* as systemd sets them
/// (`listen_pid` None: the probe's own pid).
fn run(fds: Vec<OwnedFd>, names: &str, listen_pid: Option<&str>) -> Output {
    let pid = listen_pid.map_or("$$".to_string(), |p| format!("'{p}'"));
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!(
            r#"LISTEN_PID={pid} exec "$0" inherited --timeout 5"#
        ))
        .arg(BIN)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names);
    activation::handover::at_listen_fds(&mut cmd, &fds).unwrap();
    let out = cmd.output().unwrap();
    drop(fds);
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn handed_over(dir: &std::path::Path, reply: fn(&str) -> String, write: bool) -> Vec<OwnedFd> {
    let sock = server(dir, reply);
    let file = dir.join("greeting.txt");
    std::fs::write(&file, "first line\nsecond\n").unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(&file)
        .unwrap();
    let stream = UnixStream::connect(&sock).unwrap();
    assert!(stream.as_raw_fd() > 2);
    vec![stream.into(), file.into()]
}

#[test]
fn a_connected_socket_and_a_read_only_file_both_work() {
    let dir = tempfile::tempdir().unwrap();
    let fds = handed_over(dir.path(), |t| t.to_string(), false);
    let o = run(fds, "upstream:greeting", None);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(r#"fd 3 "upstream": unix stream connected to "#)
            && out.contains(r#"server.sock, reply "hello""#),
        "{out}"
    );
    assert!(
        out.contains(r#"fd 4 "greeting": a regular file opened read-only, first line "first line", a write is refused: Bad file descriptor"#),
        "{out}"
    );
}

#[test]
fn a_wrong_reply_fails_and_a_writable_file_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let fds = handed_over(dir.path(), |_| "other\n".to_string(), true);
    let o = run(fds, "upstream:greeting", None);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(r#"reply "other""#), "{out}");
    assert!(out.contains("opened read-write"), "{out}");
    assert!(out.contains("a write is allowed"), "{out}");
}

#[test]
fn fds_for_another_process_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fds = handed_over(dir.path(), |t| t.to_string(), false);
    let o = run(fds, "upstream:greeting", Some("1"));
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("LISTEN_PID=1 (this process is"), "{out}");
    assert!(out.contains("refused: LISTEN_PID"), "{out}");
}

#[test]
fn nothing_inherited_is_a_failure() {
    let o = Command::new(BIN)
        .arg("inherited")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("no fds inherited"), "{}", stdout(&o));
}
