//! The echo loops: one task per inherited socket, one more per accepted connection, so a
//! slow or stuck client never stalls another.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use activation::{Family, InheritedSocket, SocketType, format_address};
use nix::sys::socket::{SockaddrLike, SockaddrStorage};

use crate::rawio::Socket;
use crate::workers::Workers;

/// Large enough for any UDP datagram and the default Unix datagram limit.
const DATAGRAM_BUFFER: usize = 256 * 1024;
const STREAM_BUFFER: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub debug: bool,
    pub reply_peer: bool,
    /// A deliberate fault, only in builds with the `mutants` feature (the lab's mutation
    /// score): the first byte of every reply is changed.
    pub flip_first_byte: bool,
    /// The other fault: `--reply-peer` answers with [`FORGED_PEER`], a well-formed
    /// address that is not the peer's.
    pub forge_peer: bool,
}

/// The peer a `forge-peer` mutant reports (TEST-NET-3, which no trial uses).
pub const FORGED_PEER: &str = "203.0.113.7:4242";

/// `reply` as sent: with `flip`, its first byte changed (the mutant the lab's scenarios
/// must catch); unchanged otherwise.
pub fn mutated(reply: &[u8], flip: bool) -> std::borrow::Cow<'_, [u8]> {
    match reply.split_first() {
        Some((first, rest)) if flip => {
            let mut v = Vec::with_capacity(reply.len());
            v.push(first ^ 0x01);
            v.extend_from_slice(rest);
            std::borrow::Cow::Owned(v)
        }
        _ => std::borrow::Cow::Borrowed(reply),
    }
}

/// How a socket is served, decided before anything is served so that a socket the server
/// cannot handle is an error at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// accept() connections, echo bytes on each.
    AcceptStream,
    /// accept() connections, echo each record.
    AcceptSeqPacket,
    /// An already connected stream (`Accept=yes`): echo on it.
    ConnectedStream,
    ConnectedSeqPacket,
    /// Echo each datagram to its sender.
    Datagram,
}

pub fn plan(socket: &InheritedSocket) -> Result<Plan, String> {
    let info = &socket.info;
    let family_ok = matches!(
        info.family,
        Family::Inet | Family::Inet6 | Family::Unix | Family::Vsock
    );
    let plan = match (info.socket_type, info.listening) {
        _ if !family_ok => None,
        (SocketType::Stream, true) => Some(Plan::AcceptStream),
        (SocketType::Stream, false) => Some(Plan::ConnectedStream),
        // SOCK_SEQPACKET over inet is SCTP, which this server does not speak.
        (SocketType::SeqPacket, _) if matches!(info.family, Family::Inet | Family::Inet6) => None,
        (SocketType::SeqPacket, true) => Some(Plan::AcceptSeqPacket),
        (SocketType::SeqPacket, false) => Some(Plan::ConnectedSeqPacket),
        (SocketType::Datagram, _) => Some(Plan::Datagram),
        _ => None,
    };
    plan.ok_or_else(|| {
        format!(
            "cannot serve {}: only stream, datagram and seqpacket sockets of the inet, inet6, unix and vsock families are supported",
            socket.describe()
        )
    })
}

/// Activity bookkeeping for `--idle-exit`.
#[derive(Default)]
pub struct Activity {
    started: Option<Instant>,
    active: AtomicUsize,
    last_millis: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            started: Some(Instant::now()),
            ..Default::default()
        })
    }

    fn now_millis(&self) -> u64 {
        self.started.map_or(0, |s| s.elapsed().as_millis() as u64)
    }

    fn touch(&self) {
        self.last_millis.store(self.now_millis(), Ordering::Relaxed);
    }

    fn enter(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.touch();
        ActiveGuard(self.clone())
    }

    /// How long nothing has happened, or `None` while a connection is open.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last = self.last_millis.load(Ordering::Relaxed);
        Some(Duration::from_millis(
            self.now_millis().saturating_sub(last),
        ))
    }
}

struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one inherited socket until the process ends.
pub async fn serve(
    socket: Socket,
    label: String,
    plan: Plan,
    opts: Options,
    activity: Arc<Activity>,
    workers: Arc<Workers>,
) {
    let result = match plan {
        Plan::AcceptStream | Plan::AcceptSeqPacket => {
            let records = plan == Plan::AcceptSeqPacket;
            accept_loop(socket, &label, records, opts, activity, workers).await
        }
        Plan::ConnectedStream | Plan::ConnectedSeqPacket => {
            let _active = activity.enter();
            let peer = nix::sys::socket::getpeername::<SockaddrStorage>(socket.raw()).ok();
            connection(socket, &label, peer, plan == Plan::ConnectedSeqPacket, opts).await;
            Ok(())
        }
        Plan::Datagram => datagram_loop(socket, &label, opts, activity).await,
    };
    if let Err(e) = result {
        eprintln!("socket-activate-echo: {label}: {e}");
    }
}

async fn accept_loop(
    listener: Socket,
    label: &str,
    records: bool,
    opts: Options,
    activity: Arc<Activity>,
    workers: Arc<Workers>,
) -> std::io::Result<()> {
    loop {
        match listener.accept().await {
            Ok((fd, peer)) => {
                let label = label.to_string();
                let active = activity.enter();
                workers.spawn(async move {
                    let _active = active;
                    match Socket::new(fd) {
                        Ok(conn) => connection(conn, &label, peer, records, opts).await,
                        Err(e) => eprintln!(
                            "socket-activate-echo: {label}: registering a connection: {e}"
                        ),
                    }
                });
            }
            // Out of fds or a connection reset before accept: keep serving the others.
            Err(e) => {
                eprintln!("socket-activate-echo: {label}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn peer_text(peer: Option<&SockaddrStorage>) -> String {
    peer.map_or_else(|| "(unknown)".to_string(), format_address)
}

async fn connection(
    conn: Socket,
    label: &str,
    peer: Option<SockaddrStorage>,
    records: bool,
    opts: Options,
) {
    let mut peer = peer_text(peer.as_ref());
    if opts.forge_peer {
        peer = FORGED_PEER.to_string();
    }
    if opts.debug {
        eprintln!("socket-activate-echo: {label}: connection from {peer}");
    }
    let result = if opts.reply_peer {
        reply_peer_then_drain(&conn, &peer, opts.flip_first_byte).await
    } else {
        echo_until_eof(&conn, records, opts.flip_first_byte).await
    };
    match result {
        Ok(bytes) if opts.debug => {
            eprintln!("socket-activate-echo: {label}: {peer} closed after {bytes} bytes")
        }
        Ok(_) => {}
        Err(e) => eprintln!("socket-activate-echo: {label}: {peer}: {e}"),
    }
}

/// Echoes until the client half-closes, then half-closes too. Returns bytes echoed.
async fn echo_until_eof(conn: &Socket, records: bool, flip: bool) -> std::io::Result<u64> {
    let mut buf = vec![
        0u8;
        if records {
            DATAGRAM_BUFFER
        } else {
            STREAM_BUFFER
        }
    ];
    let mut total = 0u64;
    loop {
        let n = if records {
            conn.recv(&mut buf).await?
        } else {
            conn.recv_stream(&mut buf).await?
        };
        if n == 0 {
            // Tell the client we are done too; it may still be reading.
            let _ = conn.shutdown_write();
            return Ok(total);
        }
        let reply = mutated(&buf[..n], flip && (records || total == 0));
        if records {
            // One send per record keeps the record boundary.
            conn.send(&reply).await?;
        } else {
            conn.send_all(&reply).await?;
        }
        total += n as u64;
    }
}

/// Writes the peer address line first, then reads until EOF so closing never resets a
/// connection whose client data is still unread.
async fn reply_peer_then_drain(conn: &Socket, peer: &str, flip: bool) -> std::io::Result<u64> {
    conn.send_all(&mutated(format!("{peer}\n").as_bytes(), flip))
        .await?;
    let _ = conn.shutdown_write();
    let mut buf = vec![0u8; STREAM_BUFFER];
    let mut total = 0u64;
    loop {
        let n = conn.recv(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

fn is_unnamed(addr: &SockaddrStorage) -> bool {
    addr.family().is_none()
        || addr
            .as_unix_addr()
            .is_some_and(|u| u.path().is_none() && u.as_abstract().is_none())
}

async fn datagram_loop(
    socket: Socket,
    label: &str,
    opts: Options,
    activity: Arc<Activity>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; DATAGRAM_BUFFER];
    loop {
        let (n, peer) = socket.recv_from(&mut buf).await?;
        let _active = activity.enter();
        // An unbound Unix datagram client has no address to answer to.
        let Some(peer) = peer.filter(|p| !is_unnamed(p)) else {
            if opts.debug {
                eprintln!(
                    "socket-activate-echo: {label}: {n} bytes from an unnamed peer: cannot reply"
                );
            }
            continue;
        };
        let peer_line;
        let reply: &[u8] = if opts.reply_peer {
            peer_line = if opts.forge_peer {
                format!("{FORGED_PEER}\n")
            } else {
                format!("{}\n", format_address(&peer))
            };
            peer_line.as_bytes()
        } else {
            &buf[..n]
        };
        match socket
            .send_to(&mutated(reply, opts.flip_first_byte), &peer)
            .await
        {
            Ok(_) if opts.debug => eprintln!(
                "socket-activate-echo: {label}: datagram of {n} bytes from {}",
                format_address(&peer)
            ),
            Ok(_) => {}
            Err(e) => eprintln!(
                "socket-activate-echo: {label}: reply to {}: {e}",
                format_address(&peer)
            ),
        }
    }
}

#[cfg(test)]
mod mutant_tests {
    use super::mutated;

    #[test]
    fn only_the_flip_changes_a_reply_and_only_its_first_byte() {
        assert_eq!(&*mutated(b"hello\n", false), b"hello\n");
        assert_eq!(&*mutated(b"hello\n", true), b"iello\n");
        assert_eq!(&*mutated(b"", true), b"");
    }
}
