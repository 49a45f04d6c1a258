//! socket-activate-echo: echoes on every socket it inherits through socket activation.
//!
//! A Rust peer of the upstream C++ server used by the Podman socket-activation articles.

mod rawio;
mod serve;
mod workers;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use activation::{InheritedSocket, UnsetEnv};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use serve::{Activity, Options, Plan};
use workers::Workers;

/// The upstream server's wording, kept so docs and tests that grep for it still match.
const NOT_ACTIVATED: &str = "Error: This program needs to be started by a systemd service or by systemd-socket-activate. (LISTEN_FDS is not correctly set)";

/// Echo server for socket activation: serves every inherited socket (TCP and UDP over
/// IPv4 and IPv6, Unix stream, datagram and seqpacket, vsock).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Log each connection and datagram (fd name, peer address, bytes) to stderr.
    #[arg(long)]
    debug: bool,
    /// Send READY=1 and STATUS= to $NOTIFY_SOCKET once every socket is being served.
    #[arg(long)]
    sdnotify: bool,
    /// Before serving, send FDSTORE=1 (FDNAME=echo) with every inherited socket to
    /// $NOTIFY_SOCKET: the service manager keeps duplicates for the next start (systemd
    /// takes them with FileDescriptorStoreMax= set).
    #[arg(long)]
    fdstore: bool,
    /// Exit 0 after SECS seconds with no open connection and no datagram.
    #[arg(long, value_name = "SECS")]
    idle_exit: Option<f64>,
    /// Answer each connection or datagram with the peer address the server sees, one line,
    /// instead of an echo.
    #[arg(long)]
    reply_peer: bool,
    /// Also listen on ADDRESS itself (tcp:HOST:PORT, udp:HOST:PORT or unix:PATH), for
    /// set-ups without socket activation (pasta, slirp4netns, host networking, a Unix
    /// socket behind systemd-socket-proxyd).
    #[arg(long, value_name = "ADDRESS")]
    listen: Vec<String>,
    /// inetd style: echo standard input to standard output until its end, then exit (for
    /// `StandardInput=socket`, where the connection is stdin and stdout, or the pipes
    /// `podman run -i` gives a container). No socket activation needed.
    #[arg(long, conflicts_with_all = ["listen", "idle_exit", "reply_peer", "sdnotify", "fdstore"])]
    inetd: bool,
    /// Sleep SECS seconds before serving (to study slow container starts).
    #[arg(long, value_name = "SECS")]
    start_sleep: Option<f64>,
}

fn seconds(value: Option<f64>, option: &str) -> Result<Option<Duration>, String> {
    value
        .map(|v| {
            Duration::try_from_secs_f64(v)
                .map_err(|_| format!("Error: --{option} {v}: expected a number of seconds >= 0"))
        })
        .transpose()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match start(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn start(cli: Cli) -> Result<ExitCode, String> {
    if cli.inetd {
        return inetd(cli.debug);
    }
    let idle_exit = seconds(cli.idle_exit, "idle-exit")?;
    let start_sleep = seconds(cli.start_sleep, "start-sleep")?;
    // Before any thread exists: this unsets LISTEN_* in our environment.
    let mut sockets = activation::listen_fds(UnsetEnv::Yes).map_err(|e| format!("Error: {e}"))?;
    for address in &cli.listen {
        sockets.push(listen_on(address)?);
    }
    if sockets.is_empty() {
        return Err(NOT_ACTIVATED.to_string());
    }
    let mut planned = Vec::with_capacity(sockets.len());
    let mut refused = Vec::new();
    for socket in sockets {
        match serve::plan(&socket) {
            Ok(plan) => planned.push((socket, plan)),
            Err(e) => refused.push(format!("Error: {e}")),
        }
    }
    if !refused.is_empty() {
        return Err(refused.join("\n"));
    }
    let opts = Options {
        debug: cli.debug,
        reply_peer: cli.reply_peer,
        flip_first_byte: mutant_fault("flip-byte"),
        forge_peer: mutant_fault("forge-peer"),
    };
    // The main runtime accepts, serves datagrams and waits for signals; connections go
    // to the workers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("Error: starting the async runtime: {e}"))?;
    let notify = Notify {
        ready: cli.sdnotify,
        fdstore: cli.fdstore,
    };
    let code = runtime.block_on(run(planned, opts, notify, idle_exit, start_sleep));
    // Connections still open must not delay the exit (SIGTERM must end us within 1 s).
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

/// Echoes stdin to stdout, each read written back at once (a client waiting for its line
/// gets it before it closes).
fn inetd(debug: bool) -> Result<ExitCode, String> {
    use std::io::{Read, Write};
    let (mut input, mut output) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("Error: reading standard input: {e}")),
        };
        output
            .write_all(&buf[..n])
            .and_then(|()| output.flush())
            .map_err(|e| format!("Error: writing standard output: {e}"))?;
        total += n;
    }
    if debug {
        eprintln!("inetd: echoed {total} bytes from standard input");
    }
    Ok(ExitCode::SUCCESS)
}

/// Only a build with the `mutants` feature reads `SAL_ECHO_MUTANT`: the lab's mutation
/// score puts this broken server into an image of its own. A normal build has no fault.
#[cfg(feature = "mutants")]
fn mutant_fault(name: &str) -> bool {
    std::env::var("SAL_ECHO_MUTANT").is_ok_and(|v| v == name)
}

#[cfg(not(feature = "mutants"))]
fn mutant_fault(_: &str) -> bool {
    false
}

/// Binds and (for streams) listens on `tcp:HOST:PORT`, `udp:HOST:PORT` or `unix:PATH`
/// (a stale socket file at PATH is replaced).
fn listen_on(address: &str) -> Result<InheritedSocket, String> {
    use std::os::fd::{AsFd, OwnedFd};
    let fail = |why: String| format!("Error: --listen {address}: {why}");
    let fd: OwnedFd = match address.split_once(':') {
        Some(("tcp", addr)) => std::net::TcpListener::bind(addr)
            .map_err(|e| fail(e.to_string()))?
            .into(),
        Some(("udp", addr)) => std::net::UdpSocket::bind(addr)
            .map_err(|e| fail(e.to_string()))?
            .into(),
        Some(("unix", path)) if !path.is_empty() => {
            // A socket file left by an earlier run would make bind fail.
            if std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                std::fs::remove_file(path).map_err(|e| fail(e.to_string()))?;
            }
            std::os::unix::net::UnixListener::bind(path)
                .map_err(|e| fail(e.to_string()))?
                .into()
        }
        _ => {
            return Err(fail(
                "expected tcp:HOST:PORT, udp:HOST:PORT or unix:PATH".into(),
            ));
        }
    };
    let info = activation::classify(fd.as_fd(), None).map_err(|e| fail(e.to_string()))?;
    Ok(InheritedSocket {
        fd,
        name: Some("listen".into()),
        info,
    })
}

/// What the server tells `$NOTIFY_SOCKET`.
#[derive(Debug, Clone, Copy)]
struct Notify {
    /// READY=1 once every socket is served.
    ready: bool,
    /// FDSTORE=1 with the inherited sockets, before serving.
    fdstore: bool,
}

async fn run(
    planned: Vec<(InheritedSocket, Plan)>,
    opts: Options,
    notify: Notify,
    idle_exit: Option<Duration>,
    start_sleep: Option<Duration>,
) -> Result<ExitCode, String> {
    // Handlers first: as a container's PID 1 we get no default SIGTERM action, and a
    // server that ignores it costs podman its 10 s stop timeout.
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("Error: SIGTERM handler: {e}"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("Error: SIGINT handler: {e}"))?;

    if let Some(sleep) = start_sleep {
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
            _ = int.recv() => return Ok(ExitCode::SUCCESS),
        }
    }

    if notify.fdstore {
        use std::os::fd::AsFd;
        let fds: Vec<_> = planned.iter().map(|(socket, _)| socket.as_fd()).collect();
        match activation::notify_with_fds("FDSTORE=1\nFDNAME=echo", &fds) {
            Ok(true) => {
                if opts.debug {
                    eprintln!(
                        "socket-activate-echo: sent FDSTORE=1 with {} fd(s)",
                        fds.len()
                    )
                }
            }
            Ok(false) => {
                eprintln!("socket-activate-echo: --fdstore given but NOTIFY_SOCKET is not set")
            }
            Err(e) => eprintln!("socket-activate-echo: sd_notify FDSTORE=1: {e}"),
        }
    }

    let activity = Activity::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers =
        Arc::new(Workers::start(cores).map_err(|e| format!("Error: starting workers: {e}"))?);
    let count = planned.len();
    for (socket, plan) in planned {
        let label = socket.describe();
        if opts.debug {
            eprintln!("socket-activate-echo: serving {label}");
        }
        let raw = rawio::Socket::new(socket.fd).map_err(|e| format!("Error: {label}: {e}"))?;
        tokio::spawn(serve::serve(
            raw,
            label,
            plan,
            opts,
            activity.clone(),
            workers.clone(),
        ));
    }

    if notify.ready {
        let state = format!("READY=1\nSTATUS=serving {count} socket(s)");
        match activation::notify(&state) {
            Ok(true) => {}
            Ok(false) => {
                eprintln!("socket-activate-echo: --sdnotify given but NOTIFY_SOCKET is not set")
            }
            Err(e) => eprintln!("socket-activate-echo: sd_notify: {e}"),
        }
    }

    let idle = async {
        match idle_exit {
            None => std::future::pending::<()>().await,
            Some(limit) => loop {
                let tick = (limit / 4).clamp(Duration::from_millis(10), Duration::from_millis(500));
                tokio::time::sleep(tick).await;
                if activity.idle_for().is_some_and(|idle| idle >= limit) {
                    return;
                }
            },
        }
    };

    tokio::select! {
        _ = term.recv() => if opts.debug { eprintln!("socket-activate-echo: SIGTERM, exiting") },
        _ = int.recv() => if opts.debug { eprintln!("socket-activate-echo: SIGINT, exiting") },
        _ = idle => if opts.debug { eprintln!("socket-activate-echo: idle, exiting") },
    }
    // Open connections are dropped with the runtime; nothing is left to flush.
    Ok(ExitCode::SUCCESS)
}
