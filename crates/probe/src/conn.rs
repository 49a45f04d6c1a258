//! A client socket of any family with a deadline on every operation.
//!
//! One code path for TCP, UDP, Unix and vsock: a non-blocking socket, `poll` until the
//! deadline, then the plain call. (socat's `-t` is a linger time, not a deadline: on UDP
//! it always waits the whole of it; this returns as soon as the reply is in.)

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    MsgFlags, Shutdown, SockFlag, SockaddrStorage, UnixAddr, bind, connect, getsockname, recv,
    send, shutdown, socket,
};

use crate::address::{Address, Exchange};

pub struct Client {
    fd: OwnedFd,
    exchange: Exchange,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("timed out {what}"))
}

/// Waits until `fd` is ready for `events` or the deadline passes.
fn wait(fd: &OwnedFd, events: PollFlags, deadline: Instant, what: &str) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(what));
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), events)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl Client {
    /// Opens a socket to `address`: connected for streams and seqpacket, bound and
    /// connected (so only the server's replies arrive) for datagrams.
    pub fn connect(address: &Address, deadline: Instant) -> io::Result<Client> {
        let target = address
            .sockaddr()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let raw = socket(
            address.family(),
            address.socket_type(),
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let fd = raw;
        if matches!(address, Address::Unix { .. }) && address.exchange() == Exchange::Datagram {
            // The server answers to our address, so we need one: let the kernel pick an
            // abstract name (autobind).
            bind(fd.as_raw_fd(), &UnixAddr::new_unnamed())?;
        }
        match connect(fd.as_raw_fd(), &*target) {
            Ok(()) => {}
            Err(Errno::EINPROGRESS | Errno::EAGAIN) => {
                wait(
                    &fd,
                    PollFlags::POLLOUT,
                    deadline,
                    &format!("connecting to {address}"),
                )?;
                let err =
                    nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SocketError)?;
                if err != 0 {
                    return Err(io::Error::from_raw_os_error(err));
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Client {
            fd,
            exchange: address.exchange(),
        })
    }

    pub fn exchange(&self) -> Exchange {
        self.exchange
    }

    /// Our end's address as the server should see it if nothing rewrites it.
    pub fn local_address(&self) -> Option<String> {
        getsockname::<SockaddrStorage>(self.fd.as_raw_fd())
            .ok()
            .map(|a| activation::format_address(&a))
    }

    /// Sends all of `buf` (a stream) or `buf` as one record or datagram.
    pub fn send(&self, mut buf: &[u8], deadline: Instant) -> io::Result<()> {
        loop {
            wait(&self.fd, PollFlags::POLLOUT, deadline, "sending")?;
            match send(self.fd.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
                Ok(n) if self.exchange == Exchange::Stream && n < buf.len() => buf = &buf[n..],
                Ok(_) => return Ok(()),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives what is there (a stream), or one record or datagram; 0 is EOF on streams.
    pub fn recv(&self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        loop {
            wait(
                &self.fd,
                PollFlags::POLLIN,
                deadline,
                "waiting for the reply",
            )?;
            match recv(self.fd.as_raw_fd(), buf, MsgFlags::empty()) {
                Ok(n) => return Ok(n),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives until `buf` is full or EOF; returns how much arrived.
    pub fn recv_exact(&self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.recv(&mut buf[filled..], deadline)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Ok(filled)
    }

    /// Tells a stream server we are done sending (the `echo hello | socat` EOF).
    pub fn shutdown_write(&self) -> io::Result<()> {
        shutdown(self.fd.as_raw_fd(), Shutdown::Write).map_err(Into::into)
    }
}
