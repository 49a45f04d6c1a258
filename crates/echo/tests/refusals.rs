//! Every malformed start-up makes the server exit non-zero with a message naming the
//! variable and the value (or the fd), never a silent skip.

mod common;

use std::os::fd::OwnedFd;

use common::*;
use rstest::rstest;

fn tcp() -> OwnedFd {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().into()
}

fn refused(launch: Launch, message: &str) {
    let (status, stderr) = run_to_exit(launch);
    assert!(!status.success(), "exited 0; stderr: {stderr}");
    assert!(
        stderr.contains(message),
        "stderr {stderr:?} lacks {message:?}"
    );
}

#[test]
fn without_sockets_says_how_to_start_it() {
    let mut launch = Launch::new(vec![]);
    launch.listen_fds = None;
    launch.pid = ListenPid::Unset;
    refused(
        launch,
        "Error: This program needs to be started by a systemd service or by systemd-socket-activate. (LISTEN_FDS is not correctly set)",
    );
}

#[test]
fn zero_fds_is_not_activated() {
    refused(Launch::new(vec![]), "LISTEN_FDS is not correctly set");
}

#[rstest]
#[case::word("two", "LISTEN_FDS=\"two\" is not a number of file descriptors")]
#[case::negative("-1", "LISTEN_FDS=\"-1\" is not a number")]
#[case::huge(
    "99999999999999999999",
    "LISTEN_FDS=\"99999999999999999999\" is too large"
)]
#[case::over_file_limit(
    "100000000",
    "LISTEN_FDS=\"100000000\" is more than this process may have open"
)]
fn bad_listen_fds(#[case] value: &str, #[case] message: &str) {
    let mut launch = Launch::new(vec![tcp()]);
    launch.listen_fds = Some(value.into());
    refused(launch, message);
}

#[test]
fn listen_pid_of_another_process() {
    let mut launch = Launch::new(vec![tcp()]);
    launch.pid = ListenPid::Value("1".into());
    refused(launch, "LISTEN_PID=\"1\" names another process");
}

#[test]
fn listen_pid_not_a_number() {
    let mut launch = Launch::new(vec![tcp()]);
    launch.pid = ListenPid::Value("self".into());
    refused(launch, "LISTEN_PID=\"self\" is not a process id");
}

#[test]
fn listen_pid_missing() {
    let mut launch = Launch::new(vec![tcp()]);
    launch.pid = ListenPid::Unset;
    refused(launch, "LISTEN_FDS=\"1\" is set but LISTEN_PID is not");
}

#[test]
fn fewer_names_than_fds() {
    refused(
        Launch::new(vec![tcp(), tcp()]).names("web"),
        "LISTEN_FDNAMES=\"web\" has 1 name(s) but LISTEN_FDS=\"2\" promises 2 fd(s)",
    );
}

#[test]
fn closed_fd() {
    // LISTEN_FDS promises two fds, only fd 3 is passed.
    let mut launch = Launch::new(vec![tcp()]);
    launch.listen_fds = Some("2".into());
    refused(launch, "fd 4 is not open (LISTEN_FDS promised it)");
}

#[test]
fn fd_that_is_not_a_socket() {
    let file: OwnedFd = std::fs::File::open("/proc/self/status").unwrap().into();
    refused(
        Launch::new(vec![tcp(), file]).names("web:config"),
        "fd 4 (named \"config\") is not a socket: it is a regular file",
    );
}

#[test]
fn socket_it_cannot_serve() {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    let netlink = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .unwrap();
    refused(
        Launch::new(vec![tcp(), netlink]),
        "Error: cannot serve fd 4 netlink datagram",
    );
}

#[test]
fn help_and_version() {
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("socket-activate-echo {}", env!("CARGO_PKG_VERSION"))
    );
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for option in ["--sdnotify", "--debug", "--idle-exit", "--reply-peer"] {
        assert!(help.contains(option), "--help lacks {option}");
    }
}

#[test]
fn listen_option_serves_without_activation() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut launch = Launch::new(vec![]);
    launch.listen_fds = None;
    launch.pid = ListenPid::Unset;
    let _echo = launch
        .arg("--listen")
        .arg(&format!("tcp:127.0.0.1:{port}"))
        .spawn();
    let address = format!("tcp4:127.0.0.1:{port}");
    let start = std::time::Instant::now();
    let result = loop {
        let r = probe(&address, "self-bound");
        if r.ok || start.elapsed() > std::time::Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(result.ok, "{result:?}");
}

#[test]
fn listen_option_on_a_unix_path_replaces_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    // A socket file left behind by an earlier server.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let mut launch = Launch::new(vec![]);
    launch.listen_fds = None;
    launch.pid = ListenPid::Unset;
    let _echo = launch
        .arg("--listen")
        .arg(&format!("unix:{}", path.display()))
        .spawn();
    let address = format!("unix:{}", path.display());
    let start = std::time::Instant::now();
    let result = loop {
        let r = probe(&address, "behind a proxy");
        if r.ok || start.elapsed() > std::time::Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(result.ok, "{result:?}");
}

#[test]
fn listen_option_with_a_bad_address() {
    let mut launch = Launch::new(vec![]);
    launch.listen_fds = None;
    launch.pid = ListenPid::Unset;
    refused(
        launch.arg("--listen").arg("sctp:1.2.3.4:5"),
        "Error: --listen sctp:1.2.3.4:5: expected tcp:HOST:PORT, udp:HOST:PORT or unix:PATH",
    );
}
