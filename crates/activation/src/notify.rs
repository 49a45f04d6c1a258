//! sd_notify(3): tell the service manager (or conmon, with `--sdnotify=conmon`) about state
//! changes with one datagram to `$NOTIFY_SOCKET`.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (for example `"READY=1\nSTATUS=serving"`) to `$NOTIFY_SOCKET`.
///
/// `Ok(false)` when the variable is unset: nobody listens, which is not an error.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        None => Ok(false),
        Some(target) => {
            let target = target.to_str().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NOTIFY_SOCKET is not valid UTF-8",
                )
            })?;
            notify_to(target, state).map(|()| true)
        }
    }
}

/// Sends `state` to the notification socket `target`: a path (`/run/...`) or an abstract
/// name (`@name`), as `$NOTIFY_SOCKET` spells them.
pub fn notify_to(target: &str, state: &str) -> io::Result<()> {
    let addr = notify_address(target)?;
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(state.as_bytes(), &addr)?;
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
