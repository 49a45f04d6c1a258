//! The parent's side of the protocol: a child started by `Command` gets `fds` as fds 3,
//! 4, ..., in order, as systemd (or `systemd-socket-activate`) hands them over. The
//! variables are the caller's: `LISTEN_PID` must be the child's own pid, which only the
//! child knows (`sh -c 'LISTEN_PID=$$ exec ...'`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Arranges for the child of `cmd` to find `fds` at 3.. . Each is first duplicated
/// (close-on-exec) above the range, so no `dup2` into the range clobbers a source; the
/// copies live in `cmd` until it is dropped.
pub fn at_listen_fds(cmd: &mut Command, fds: &[OwnedFd]) -> io::Result<()> {
    let above = crate::LISTEN_FDS_START + fds.len() as i32;
    let sources = fds
        .iter()
        .map(|fd| {
            let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(above))?;
            // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        })
        .collect::<Result<Vec<OwnedFd>, nix::Error>>()?;
    // SAFETY: only dup2, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in sources.iter().enumerate() {
                if libc::dup2(fd.as_raw_fd(), crate::LISTEN_FDS_START + i as i32) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}
