//! sd_notify(3): tell the service manager (or conmon, with `--sdnotify=conmon`) about state
//! changes with one datagram to `$NOTIFY_SOCKET`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (for example `"READY=1\nSTATUS=serving"`) to `$NOTIFY_SOCKET`.
///
/// `Ok(false)` when the variable is unset: nobody listens, which is not an error.
pub fn notify(state: &str) -> io::Result<bool> {
    notify_with_fds(state, &[])
}

/// Sends `state` to the notification socket `target`: a path (`/run/...`) or an abstract
/// name (`@name`), as `$NOTIFY_SOCKET` spells them.
pub fn notify_to(target: &str, state: &str) -> io::Result<()> {
    notify_with_fds_to(target, state, &[])
}

/// Sends `state` with `fds` attached (`SCM_RIGHTS`) to `$NOTIFY_SOCKET`, as
/// sd_pid_notify_with_fds(3) does: for `FDSTORE=1`, which asks the service manager to keep
/// duplicates of the fds for the service's next start.
///
/// `Ok(false)` when the variable is unset.
pub fn notify_with_fds(state: &str, fds: &[BorrowedFd<'_>]) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        None => Ok(false),
        Some(target) => {
            let target = target.to_str().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NOTIFY_SOCKET is not valid UTF-8",
                )
            })?;
            notify_with_fds_to(target, state, fds).map(|()| true)
        }
    }
}

/// [`notify_with_fds`] to the notification socket `target`.
pub fn notify_with_fds_to(target: &str, state: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
    let addr = match target.strip_prefix('@') {
        Some(name) => UnixAddr::new_abstract(name.as_bytes()),
        None => {
            notify_address(target)?;
            UnixAddr::new(target)
        }
    }
    .map_err(io::Error::from)?;
    let socket = UnixDatagram::unbound()?;
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let control: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let sent = sendmsg(
        socket.as_raw_fd(),
        &[io::IoSlice::new(state.as_bytes())],
        control,
        MsgFlags::empty(),
        Some(&addr),
    )
    .map_err(io::Error::from)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!(
                "NOTIFY_SOCKET={target:?}: sent {sent} of {} bytes",
                state.len()
            ),
        ));
    }
    Ok(())
}

fn notify_address(target: &str) -> io::Result<SocketAddr> {
    if let Some(name) = target.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if target.starts_with('/') {
        SocketAddr::from_pathname(target)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={target:?} is neither an absolute path nor an abstract @name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn path_socket_receives_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1\nSTATUS=serving 2 sockets").unwrap();
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving 2 sockets");
    }

    #[test]
    fn abstract_socket_receives_state() {
        let name = format!("sal-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(&format!("@{name}"), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    /// The receiving end gets the state and working duplicates of the fds.
    #[test]
    fn fds_go_with_the_state() {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        use std::io::{Read, Write};
        use std::os::fd::{AsFd, FromRawFd, OwnedFd};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        notify_with_fds_to(
            path.to_str().unwrap(),
            "FDSTORE=1\nFDNAME=echo",
            &[theirs.as_fd()],
        )
        .unwrap();
        drop(theirs);
        let mut buf = [0u8; 64];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            receiver.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .unwrap();
        let received: Vec<RawFd> = msg
            .cmsgs()
            .unwrap()
            .flat_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => fds,
                _ => Vec::new(),
            })
            .collect();
        let n = msg.bytes;
        assert_eq!(&buf[..n], b"FDSTORE=1\nFDNAME=echo");
        assert_eq!(received.len(), 1);
        // SAFETY: the fd was just received and is owned by nothing else.
        let mut stored =
            std::os::unix::net::UnixStream::from(unsafe { OwnedFd::from_raw_fd(received[0]) });
        stored.write_all(b"hi").unwrap();
        let mut two = [0u8; 2];
        ours.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"hi");
    }

    #[test]
    fn relative_target_is_refused_by_name() {
        let err = notify_to("notify.sock", "READY=1").unwrap_err();
        assert!(
            err.to_string().contains("NOTIFY_SOCKET=\"notify.sock\""),
            "{err}"
        );
    }

    #[test]
    fn missing_listener_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody");
        assert!(notify_to(path.to_str().unwrap(), "READY=1").is_err());
    }
}
