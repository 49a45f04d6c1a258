//! `echo-probe inherited`: what this process was handed through `LISTEN_FDS` and whether
//! each fd works. systemd's `OpenFile=` hands over files and *connected* sockets, not
//! listening ones, so this is the consumer an `OpenFile=` test needs: a file is read (and
//! a zero-byte write tells whether it was opened read-only), a connected stream socket
//! gets one echo round trip.

use std::fmt;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use activation::{SocketType, env};

/// One inherited fd and what using it gave.
#[derive(Debug)]
pub struct Inherited {
    pub fd: i32,
    pub name: Option<String>,
    pub kind: Kind,
}

#[derive(Debug)]
pub enum Kind {
    /// A regular file: how it was opened, its first line, and what a write said.
    File {
        access: &'static str,
        first_line: Result<String, String>,
        write_refused: Option<String>,
    },
    /// A connected stream socket (what `OpenFile=` makes of a socket path).
    Connected {
        socket: String,
        peer: String,
        round_trip: Result<String, String>,
    },
    /// A listening socket or any other socket: described, not used.
    Socket { socket: String },
    /// Anything else (a pipe, a device, a closed fd).
    Other { what: String },
}

/// What LISTEN_* said and each fd's result.
#[derive(Debug)]
pub struct Report {
    pub listen_pid: Option<String>,
    pub own_pid: u32,
    pub fds: Vec<Inherited>,
    /// Why the variables were refused (LISTEN_PID for another process, a bad count).
    pub refused: Option<String>,
}

impl Report {
    /// Every fd is usable: files read, round trips answered with `expect`.
    pub fn all_ok(&self, expect: &str) -> bool {
        self.refused.is_none()
            && !self.fds.is_empty()
            && self.fds.iter().all(|f| match &f.kind {
                Kind::File { first_line, .. } => first_line.is_ok(),
                Kind::Connected { round_trip, .. } => round_trip.as_deref() == Ok(expect),
                Kind::Socket { .. } => true,
                Kind::Other { .. } => false,
            })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pid = self.listen_pid.as_deref().unwrap_or("(unset)");
        writeln!(f, "LISTEN_PID={pid} (this process is {})", self.own_pid)?;
        if let Some(why) = &self.refused {
            writeln!(f, "refused: {why}")?;
        }
        if self.fds.is_empty() && self.refused.is_none() {
            writeln!(f, "no fds inherited")?;
        }
        for i in &self.fds {
            let name = i
                .name
                .as_deref()
                .map(|n| format!(" {n:?}"))
                .unwrap_or_default();
            write!(f, "fd {}{name}: ", i.fd)?;
            match &i.kind {
                Kind::File {
                    access,
                    first_line,
                    write_refused,
                } => {
                    write!(f, "a regular file opened {access}")?;
                    match first_line {
                        Ok(l) => write!(f, ", first line {l:?}")?,
                        Err(e) => write!(f, ", reading failed: {e}")?,
                    }
                    match write_refused {
                        Some(e) => writeln!(f, ", a write is refused: {e}")?,
                        None => writeln!(f, ", a write is allowed")?,
                    }
                }
                Kind::Connected {
                    socket,
                    peer,
                    round_trip,
                } => match round_trip {
                    Ok(reply) => writeln!(f, "{socket} connected to {peer}, reply {reply:?}")?,
                    Err(e) => writeln!(f, "{socket} connected to {peer}, no reply: {e}")?,
                },
                Kind::Socket { socket } => writeln!(f, "{socket}")?,
                Kind::Other { what } => writeln!(f, "{what}")?,
            }
        }
        Ok(())
    }
}

/// Reads `LISTEN_*` and uses every fd it names: `send` (plus a newline) on connected
/// sockets, waiting up to `timeout` for the reply.
pub fn inspect(send: &str, timeout: Duration) -> Report {
    let own_pid = std::process::id();
    let mut report = Report {
        listen_pid: None,
        own_pid,
        fds: Vec::new(),
        refused: None,
    };
    let listen = env::read_vars().and_then(|vars| {
        report.listen_pid = vars.listen_pid.clone();
        env::parse(&vars, own_pid)
    });
    match listen {
        Err(e) => report.refused = Some(e.to_string()),
        Ok(None) => {}
        Ok(Some(listen)) => {
            report.fds = listen
                .fds()
                .enumerate()
                .map(|(index, raw)| Inherited {
                    fd: raw,
                    name: listen.name(index).map(str::to_owned),
                    kind: use_fd(raw, send, timeout),
                })
                .collect();
        }
    }
    report
}

fn use_fd(raw: i32, send: &str, timeout: Duration) -> Kind {
    // SAFETY: F_GETFL on a number that may not be open only returns EBADF.
    let flags = nix::fcntl::fcntl(
        unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) },
        nix::fcntl::FcntlArg::F_GETFL,
    );
    let Ok(flags) = flags else {
        return Kind::Other {
            what: "not open (LISTEN_FDS promised it)".into(),
        };
    };
    // SAFETY: the fd is open and, by the LISTEN_FDS protocol, this process's to own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let stat = match nix::sys::stat::fstat(fd.as_fd()) {
        Ok(s) => s,
        Err(e) => {
            return Kind::Other {
                what: format!("fstat failed: {e}"),
            };
        }
    };
    match stat.st_mode & libc::S_IFMT {
        libc::S_IFREG => use_file(fd, flags),
        libc::S_IFSOCK => use_socket(fd, send, timeout),
        _ => Kind::Other {
            what: format!(
                "neither a regular file nor a socket (mode {:o})",
                stat.st_mode
            ),
        },
    }
}

fn use_file(fd: OwnedFd, flags: i32) -> Kind {
    let access = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => "read-only",
        libc::O_WRONLY => "write-only",
        _ => "read-write",
    };
    let mut file = std::fs::File::from(fd);
    // A zero-byte write changes nothing; the kernel still refuses it on an fd not open
    // for writing (EBADF), which is what tells a read-only hand-over.
    let write_refused = file.write(&[]).err().map(|e| e.to_string());
    let mut head = vec![0u8; 4096];
    let first_line = file
        .read(&mut head)
        .map(|n| {
            String::from_utf8_lossy(&head[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .map_err(|e| e.to_string());
    Kind::File {
        access,
        first_line,
        write_refused,
    }
}

fn use_socket(fd: OwnedFd, send: &str, timeout: Duration) -> Kind {
    let info = match activation::classify(fd.as_fd(), None) {
        Ok(i) => i,
        Err(e) => {
            return Kind::Other {
                what: e.to_string(),
            };
        }
    };
    let socket = format!("{} {}", info.family, info.socket_type);
    if info.listening || info.socket_type != SocketType::Stream {
        let listening = if info.listening { " listening" } else { "" };
        return Kind::Socket {
            socket: format!("{socket}{listening} {}", info.local_address),
        };
    }
    let peer = nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(fd.as_raw_fd())
        .map(|a| activation::format_address(&a))
        .unwrap_or_else(|e| format!("(no peer: {e})"));
    Kind::Connected {
        socket,
        peer,
        round_trip: round_trip(fd, send, timeout),
    }
}

/// One echo exchange: send, half-close, read until the peer closes or the deadline.
fn round_trip(fd: OwnedFd, send: &str, timeout: Duration) -> Result<String, String> {
    use nix::sys::socket::{Shutdown, setsockopt, shutdown, sockopt};
    let tv = nix::sys::time::TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _);
    setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
    let raw = fd.as_raw_fd();
    let mut stream = std::fs::File::from(fd);
    stream
        .write_all(format!("{send}\n").as_bytes())
        .map_err(|e| format!("sending: {e}"))?;
    shutdown(raw, Shutdown::Write).map_err(|e| format!("half-closing: {e}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("reading the reply: {e}"))?;
    let text = String::from_utf8_lossy(&reply);
    Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
}
