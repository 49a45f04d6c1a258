//! Sockets inherited through socket activation, following sd_listen_fds(3), and
//! sd_notify(3).
//!
//! [`listen_fds`] reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, takes ownership of
//! fds 3.., marks them close-on-exec, asks the kernel what each one is and (optionally)
//! removes the variables so children do not see them. Knows nothing of tokio, QEMU or
//! podman.

pub mod env;
pub mod handover;
pub mod notify;
pub mod socket;

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

pub use env::{EnvError, LISTEN_FDS_START, ListenEnv, ListenVars};
pub use notify::{notify, notify_to, notify_with_fds, notify_with_fds_to};
pub use socket::{
    Family, FdError, InheritedSocket, SocketInfo, SocketType, classify, format_address,
};

/// Why the inherited sockets could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("LISTEN_FDS={value:?} is more than this process may have open (RLIMIT_NOFILE {limit})")]
    OverFileLimit { value: String, limit: u64 },
    #[error(transparent)]
    Fd(#[from] FdError),
}

/// Whether [`listen_fds`] removes `LISTEN_*` from the environment after reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsetEnv {
    Yes,
    No,
}

/// Takes the sockets passed to this process. An empty list when `LISTEN_FDS` is unset.
///
/// With [`UnsetEnv::Yes`] this mutates the process environment, so call it at start-up
/// before other threads exist (before building a tokio runtime, for instance).
pub fn listen_fds(unset: UnsetEnv) -> Result<Vec<InheritedSocket>, Error> {
    let vars = env::read_vars()?;
    let parsed = env::parse(&vars, std::process::id());
    if unset == UnsetEnv::Yes {
        for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // SAFETY: documented precondition: called while the process is single-threaded.
            unsafe { std::env::remove_var(var) };
        }
    }
    let Some(listen) = parsed? else {
        return Ok(Vec::new());
    };
    check_file_limit(&listen, vars.listen_fds.as_deref().unwrap_or_default())?;
    take_fds(&listen)
}

fn check_file_limit(listen: &ListenEnv, value: &str) -> Result<(), Error> {
    use nix::sys::resource::{Resource, getrlimit};
    let (soft, _hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((u64::MAX, u64::MAX));
    let highest = LISTEN_FDS_START as u64 + listen.count as u64;
    if listen.count > 0 && highest > soft {
        return Err(Error::OverFileLimit {
            value: value.into(),
            limit: soft,
        });
    }
    Ok(())
}

/// Takes ownership of the fds `listen` names and classifies each one.
pub fn take_fds(listen: &ListenEnv) -> Result<Vec<InheritedSocket>, Error> {
    let mut sockets = Vec::with_capacity(listen.count);
    for (index, raw) in listen.fds().enumerate() {
        let name = listen.name(index).map(str::to_owned);
        // Check the fd is open before anything claims ownership of it.
        if nix::fcntl::fcntl(
            // SAFETY: only used for this one F_GETFD call, which tolerates a closed fd.
            unsafe { BorrowedFd::borrow_raw(raw) },
            nix::fcntl::FcntlArg::F_GETFD,
        )
        .is_err()
        {
            return Err(FdError::Closed { fd: raw, name }.into());
        }
        // SAFETY: the fd is open and, by the LISTEN_FDS protocol, was passed to this
        // process to own; nothing else in this process refers to it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        socket::set_cloexec(std::os::fd::AsFd::as_fd(&fd)).map_err(|e| FdError::Sys {
            fd: raw,
            name: name.clone(),
            what: "setting FD_CLOEXEC",
            source: e.into(),
        })?;
        let info = classify(std::os::fd::AsFd::as_fd(&fd), name.as_deref())?;
        sockets.push(InheritedSocket { fd, name, info });
    }
    Ok(sockets)
}
