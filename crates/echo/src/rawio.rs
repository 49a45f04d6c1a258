//! Async I/O on raw socket fds of any family.
//!
//! tokio has types for TCP, UDP and Unix sockets but not for vsock or seqpacket, and the
//! echo server must treat all of them alike. So every socket is an `AsyncFd<OwnedFd>`
//! driven with the plain socket calls; the family only matters when printing addresses.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, Shutdown, SockFlag, SockaddrStorage};
use tokio::io::unix::AsyncFd;

pub struct Socket(AsyncFd<OwnedFd>);

fn would_block(e: Errno) -> io::Error {
    io::Error::from(e)
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open and keeps returning the same fd until it is dropped,
    // which only happens when the AsyncFd drops it.
    unsafe { AsyncFd::register(fd) }.map_err(Into::into)
}

impl Socket {
    /// Registers `fd` with the reactor after switching it to non-blocking mode.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(Socket(register(fd)?))
    }

    pub fn raw(&self) -> i32 {
        self.0.get_ref().as_raw_fd()
    }

    /// Accepts one connection. The fd comes back unregistered so the caller can register it
    /// with whichever worker runtime will serve it.
    pub async fn accept(&self) -> io::Result<(OwnedFd, Option<SockaddrStorage>)> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| {
                let raw = nix::sys::socket::accept4(
                    fd.as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )
                .map_err(would_block)?;
                // SAFETY: accept4 returned a new fd that nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(raw) })
            }) {
                Ok(Ok(fd)) => {
                    let peer =
                        nix::sys::socket::getpeername::<SockaddrStorage>(fd.as_raw_fd()).ok();
                    return Ok((fd, peer));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| {
                nix::sys::socket::recv(fd.as_raw_fd(), buf, MsgFlags::empty()).map_err(would_block)
            }) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives from a stream socket. A read shorter than `buf` drained the socket, so
    /// readiness is cleared without a second, EAGAIN-only recv (as tokio's own TcpStream
    /// does; sound with edge-triggered epoll, where new data raises a new edge). Not for
    /// datagrams: a short datagram says nothing about the queue behind it.
    pub async fn recv_stream(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match nix::sys::socket::recv(self.raw(), buf, MsgFlags::empty()) {
                Ok(n) => {
                    if n > 0 && n < buf.len() {
                        guard.clear_ready();
                    }
                    return Ok(n);
                }
                Err(Errno::EAGAIN) => guard.clear_ready(),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends one buffer; on a stream socket it may send only part of it.
    pub async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| {
                nix::sys::socket::send(fd.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL)
                    .map_err(would_block)
            }) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn send_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.send(buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, Option<SockaddrStorage>)> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| {
                nix::sys::socket::recvfrom::<SockaddrStorage>(fd.as_raw_fd(), buf)
                    .map_err(would_block)
            }) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn send_to(&self, buf: &[u8], addr: &SockaddrStorage) -> io::Result<usize> {
        loop {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| {
                nix::sys::socket::sendto(fd.as_raw_fd(), buf, addr, MsgFlags::MSG_NOSIGNAL)
                    .map_err(would_block)
            }) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    pub fn shutdown_write(&self) -> io::Result<()> {
        nix::sys::socket::shutdown(self.raw(), Shutdown::Write).map_err(Into::into)
    }
}
