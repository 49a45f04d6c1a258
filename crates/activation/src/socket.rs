//! What an inherited fd is, asked of the kernel rather than assumed from the unit file.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getsockname};

/// Socket address family (`SO_DOMAIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Inet,
    Inet6,
    Unix,
    Vsock,
    Netlink,
    Other(i32),
}

impl Family {
    pub fn from_raw(domain: i32) -> Self {
        match domain {
            libc::AF_INET => Family::Inet,
            libc::AF_INET6 => Family::Inet6,
            libc::AF_UNIX => Family::Unix,
            libc::AF_VSOCK => Family::Vsock,
            libc::AF_NETLINK => Family::Netlink,
            other => Family::Other(other),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Family::Inet => f.write_str("inet"),
            Family::Inet6 => f.write_str("inet6"),
            Family::Unix => f.write_str("unix"),
            Family::Vsock => f.write_str("vsock"),
            Family::Netlink => f.write_str("netlink"),
            Family::Other(n) => write!(f, "family {n}"),
        }
    }
}

/// Socket type (`SO_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketType {
    Stream,
    Datagram,
    SeqPacket,
    Raw,
    Other(i32),
}

impl SocketType {
    pub fn from_raw(ty: i32) -> Self {
        match ty {
            libc::SOCK_STREAM => SocketType::Stream,
            libc::SOCK_DGRAM => SocketType::Datagram,
            libc::SOCK_SEQPACKET => SocketType::SeqPacket,
            libc::SOCK_RAW => SocketType::Raw,
            other => SocketType::Other(other),
        }
    }
}

impl fmt::Display for SocketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketType::Stream => f.write_str("stream"),
            SocketType::Datagram => f.write_str("datagram"),
            SocketType::SeqPacket => f.write_str("seqpacket"),
            SocketType::Raw => f.write_str("raw"),
            SocketType::Other(n) => write!(f, "type {n}"),
        }
    }
}

/// The kernel's view of one socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    pub family: Family,
    pub socket_type: SocketType,
    /// `SO_ACCEPTCONN`: a stream or seqpacket socket after `listen()`.
    pub listening: bool,
    /// `getsockname`, formatted by [`format_address`].
    pub local_address: String,
}

/// An fd that systemd (or podman, or systemd-socket-activate) handed over, owned:
/// dropping it closes the fd.
#[derive(Debug)]
pub struct InheritedSocket {
    pub fd: OwnedFd,
    /// The name from `LISTEN_FDNAMES` (`FileDescriptorName=`), if it was set.
    pub name: Option<String>,
    pub info: SocketInfo,
}

impl InheritedSocket {
    /// A one-line description for logs: `fd 3 "web" inet stream listening 127.0.0.1:3000`.
    pub fn describe(&self) -> String {
        let name = self
            .name
            .as_deref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        let listening = if self.info.listening {
            " listening"
        } else {
            ""
        };
        format!(
            "fd {}{name} {} {}{listening} {}",
            self.fd.as_raw_fd(),
            self.info.family,
            self.info.socket_type,
            self.info.local_address
        )
    }
}

/// Why an inherited fd could not be classified.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("fd {fd}{} is not open (LISTEN_FDS promised it)", name_suffix(name))]
    Closed { fd: i32, name: Option<String> },
    #[error("fd {fd}{} is not a socket: it is {kind}", name_suffix(name))]
    NotASocket {
        fd: i32,
        name: Option<String>,
        kind: &'static str,
    },
    #[error("fd {fd}{}: {what} failed: {source}", name_suffix(name))]
    Sys {
        fd: i32,
        name: Option<String>,
        what: &'static str,
        source: io::Error,
    },
}

fn name_suffix(name: &Option<String>) -> String {
    name.as_deref()
        .map(|n| format!(" (named {n:?})"))
        .unwrap_or_default()
}

fn getsockopt_int(fd: BorrowedFd<'_>, option: libc::c_int) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given, and `fd` is a
    // borrowed, open descriptor.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The file type of a non-socket fd, for error messages.
fn file_kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFIFO => "a pipe",
        libc::S_IFLNK => "a symlink",
        libc::S_IFSOCK => "a socket",
        _ => "of an unknown file type",
    }
}

/// Asks the kernel what `fd` is. `name` only decorates error messages.
pub fn classify(fd: BorrowedFd<'_>, name: Option<&str>) -> Result<SocketInfo, FdError> {
    let raw = fd.as_raw_fd();
    let err = |what, source| FdError::Sys {
        fd: raw,
        name: name.map(Into::into),
        what,
        source,
    };
    let stat = nix::sys::stat::fstat(fd).map_err(|e| err("fstat", e.into()))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(FdError::NotASocket {
            fd: raw,
            name: name.map(Into::into),
            kind: file_kind(stat.st_mode),
        });
    }
    let family =
        Family::from_raw(getsockopt_int(fd, libc::SO_DOMAIN).map_err(|e| err("SO_DOMAIN", e))?);
    let socket_type =
        SocketType::from_raw(getsockopt_int(fd, libc::SO_TYPE).map_err(|e| err("SO_TYPE", e))?);
    // SO_ACCEPTCONN is ENOPROTOOPT on datagram sockets of some families; that means "no".
    let listening = getsockopt_int(fd, libc::SO_ACCEPTCONN).unwrap_or(0) != 0;
    let local_address = match getsockname::<SockaddrStorage>(fd.as_raw_fd()) {
        Ok(addr) => format_address(&addr),
        Err(e) => return Err(err("getsockname", e.into())),
    };
    Ok(SocketInfo {
        family,
        socket_type,
        listening,
        local_address,
    })
}

/// Formats a socket address the way this workspace prints them everywhere:
/// `127.0.0.1:3000`, `[::1]:3000`, `/path`, `@abstract`, `(unnamed)`, `vsock:1:3000`.
pub fn format_address(addr: &SockaddrStorage) -> String {
    match addr.family() {
        Some(AddressFamily::Inet) => addr.as_sockaddr_in().map(|a| a.to_string()),
        Some(AddressFamily::Inet6) => addr.as_sockaddr_in6().map(|a| {
            std::net::SocketAddrV6::new(a.ip(), a.port(), a.flowinfo(), a.scope_id()).to_string()
        }),
        Some(AddressFamily::Unix) => addr.as_unix_addr().map(|u| {
            if let Some(path) = u.path() {
                path.display().to_string()
            } else if let Some(name) = u.as_abstract() {
                format!("@{}", String::from_utf8_lossy(name))
            } else {
                "(unnamed)".to_string()
            }
        }),
        Some(AddressFamily::Vsock) => addr
            .as_vsock_addr()
            .map(|v| format!("vsock:{}:{}", v.cid(), v.port())),
        _ => None,
    }
    .unwrap_or_else(|| format!("(family {})", addr.family().map_or(-1, |f| f as i32)))
}

/// Puts `FD_CLOEXEC` on an inherited fd, as sd_listen_fds(3) does, so it does not leak
/// into processes this one starts.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD)?);
    fcntl(fd, FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC))?;
    Ok(())
}

impl AsFd for InheritedSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::net::{TcpListener, UdpSocket};
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    fn info(fd: impl AsFd) -> SocketInfo {
        classify(fd.as_fd(), None).unwrap()
    }

    #[test]
    fn tcp4_listener() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let i = info(&l);
        assert_eq!(
            (i.family, i.socket_type, i.listening),
            (Family::Inet, SocketType::Stream, true)
        );
        assert_eq!(i.local_address, l.local_addr().unwrap().to_string());
    }

    #[test]
    fn udp6_socket() {
        // No quiet pass without IPv6: a host without ::1 fails here, by name.
        let s = UdpSocket::bind("[::1]:0")
            .expect("binding [::1]:0: this test needs the IPv6 loopback address on the host");
        let i = info(&s);
        assert_eq!(
            (i.family, i.socket_type, i.listening),
            (Family::Inet6, SocketType::Datagram, false)
        );
        assert_eq!(i.local_address, s.local_addr().unwrap().to_string());
    }

    #[test]
    fn unix_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join("s")).unwrap();
        let i = info(&l);
        assert_eq!(
            (i.family, i.socket_type, i.listening),
            (Family::Unix, SocketType::Stream, true)
        );
        assert_eq!(i.local_address, dir.path().join("s").display().to_string());

        let d = UnixDatagram::unbound().unwrap();
        let i = info(&d);
        assert_eq!(
            (i.socket_type, i.local_address.as_str()),
            (SocketType::Datagram, "(unnamed)")
        );

        let (a, _b) = UnixStream::pair().unwrap();
        assert!(!info(&a).listening);
    }

    #[rstest]
    #[case::file(std::fs::File::open("/proc/self/status").unwrap().into(), "a regular file")]
    #[case::dir(std::fs::File::open("/").unwrap().into(), "a directory")]
    #[case::pipe(nix::unistd::pipe().unwrap().0, "a pipe")]
    fn not_a_socket(#[case] fd: OwnedFd, #[case] kind: &str) {
        let err = classify(fd.as_fd(), Some("web")).unwrap_err();
        let expected = format!(
            "fd {} (named \"web\") is not a socket: it is {kind}",
            fd.as_raw_fd()
        );
        assert_eq!(err.to_string(), expected);
    }
}
