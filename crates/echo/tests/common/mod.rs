//! Starts the real `socket-activate-echo` with real inherited sockets, the way systemd does:
//! fds from 3, `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` set to the server's own pid.

#![allow(dead_code)] // each test binary uses a different part

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_socket-activate-echo");

/// What `LISTEN_PID` the server gets.
#[derive(Clone, Debug)]
pub enum ListenPid {
    /// Its own pid, as systemd sets it.
    Own,
    Value(String),
    Unset,
}

pub struct Launch {
    pub fds: Vec<OwnedFd>,
    pub listen_fds: Option<String>,
    pub names: Option<String>,
    pub pid: ListenPid,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Launch {
    pub fn new(fds: Vec<OwnedFd>) -> Self {
        let n = fds.len();
        Launch {
            fds,
            listen_fds: Some(n.to_string()),
            names: None,
            pid: ListenPid::Own,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn names(mut self, names: &str) -> Self {
        self.names = Some(names.into());
        self
    }

    pub fn spawn(self) -> Echo {
        let stderr_file = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new("/bin/sh");
        // `exec` keeps the shell's pid, so `$$` is the server's pid, as LISTEN_PID must be.
        let script = match &self.pid {
            ListenPid::Own => r#"LISTEN_PID=$$ exec "$0" "$@""#.to_string(),
            ListenPid::Value(v) => format!(r#"LISTEN_PID='{v}' exec "$0" "$@""#),
            ListenPid::Unset => r#"unset LISTEN_PID; exec "$0" "$@""#.to_string(),
        };
        cmd.arg("-c").arg(script).arg(BIN).args(&self.args);
        cmd.env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("LISTEN_PID");
        cmd.env_remove("NOTIFY_SOCKET");
        if let Some(v) = &self.listen_fds {
            cmd.env("LISTEN_FDS", v);
        }
        if let Some(v) = &self.names {
            cmd.env("LISTEN_FDNAMES", v);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file.reopen().unwrap());
        activation::handover::at_listen_fds(&mut cmd, &self.fds).unwrap();
        let child = cmd.spawn().expect("spawn socket-activate-echo");
        // The parent's copies are closed so the server alone holds the sockets.
        drop(cmd);
        drop(self.fds);
        Echo {
            child: Some(child),
            stderr: stderr_file,
        }
    }
}

/// A running server; killed and reaped on drop.
pub struct Echo {
    child: Option<Child>,
    stderr: tempfile::NamedTempFile,
}

impl Echo {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits up to `limit` for the server to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let start = Instant::now();
        let child = self.child.as_mut().unwrap();
        while start.elapsed() < limit {
            if let Some(status) = child.try_wait().unwrap() {
                return Some((status, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    pub fn stderr(&self) -> String {
        let mut s = String::new();
        std::fs::File::open(self.stderr.path())
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the server to completion (it is expected to refuse to start) and returns its exit
/// status and stderr.
pub fn run_to_exit(launch: Launch) -> (ExitStatus, String) {
    let mut echo = launch.spawn();
    let (status, _) = echo
        .wait_exit(Duration::from_secs(10))
        .expect("the server should have exited");
    (status, echo.stderr())
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path_str(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_string()
}

/// The kinds of socket the server must serve on a host without vsock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp4,
    Tcp6,
    Udp4,
    Udp6,
    UnixStream,
    UnixDatagram,
    UnixSeqPacket,
}

pub const ALL_KINDS: [Kind; 7] = [
    Kind::Tcp4,
    Kind::Tcp6,
    Kind::Udp4,
    Kind::Udp6,
    Kind::UnixStream,
    Kind::UnixDatagram,
    Kind::UnixSeqPacket,
];

/// A socket as systemd would create it for the given kind, and the probe address for it.
/// Unix sockets live in `dir`.
pub fn make_socket(kind: Kind, dir: &std::path::Path, tag: &str) -> (OwnedFd, String) {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
    };
    let unix = |ty: SockType, scheme: &str| {
        let path = dir.join(format!("{tag}.sock"));
        let fd = socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None).unwrap();
        bind(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        if ty != SockType::Datagram {
            listen(&fd, Backlog::new(512).unwrap()).unwrap();
        }
        (fd, format!("{scheme}:{}", path.display()))
    };
    match kind {
        Kind::Tcp4 | Kind::Tcp6 => {
            let host = if kind == Kind::Tcp4 {
                "127.0.0.1:0"
            } else {
                "[::1]:0"
            };
            let l = std::net::TcpListener::bind(host).unwrap();
            let a = l.local_addr().unwrap();
            let scheme = if a.is_ipv4() { "tcp4" } else { "tcp6" };
            (l.into(), format!("{scheme}:{a}"))
        }
        Kind::Udp4 | Kind::Udp6 => {
            let host = if kind == Kind::Udp4 {
                "127.0.0.1:0"
            } else {
                "[::1]:0"
            };
            let s = std::net::UdpSocket::bind(host).unwrap();
            let a = s.local_addr().unwrap();
            let scheme = if a.is_ipv4() { "udp4" } else { "udp6" };
            (s.into(), format!("{scheme}:{a}"))
        }
        Kind::UnixStream => unix(SockType::Stream, "unix"),
        Kind::UnixDatagram => unix(SockType::Datagram, "unix-dgram"),
        Kind::UnixSeqPacket => unix(SockType::SeqPacket, "unix-seqpacket"),
    }
}

/// Probes `address` with the echo-probe library (the code the binary runs).
pub fn probe(address: &str, text: &str) -> echo_probe::ProbeResult {
    let spec = echo_probe::ProbeSpec {
        address: address.parse().unwrap(),
        send: format!("{text}\n").into_bytes(),
        expect: echo_probe::Expect::Bytes(format!("{text}\n").into_bytes()),
        timeout: Duration::from_secs(10),
        keep_open: false,
    };
    echo_probe::probe(&spec)
}
