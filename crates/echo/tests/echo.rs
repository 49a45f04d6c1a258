//! The real server with real inherited sockets, probed by echo-probe and by plain std clients.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use rstest::rstest;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Every byte value, so an echo that mangles anything shows.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

/// A client written with std only (no echo-probe code): sends `data`, returns the reply.
fn std_client(kind: Kind, address: &str, data: &[u8], dir: &std::path::Path) -> Vec<u8> {
    let target = address.split_once(':').unwrap().1;
    let mut reply = Vec::new();
    match kind {
        Kind::Tcp4 | Kind::Tcp6 => {
            let mut s =
                TcpStream::connect(target.parse::<std::net::SocketAddr>().unwrap()).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s.write_all(data).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            s.read_to_end(&mut reply).unwrap();
        }
        Kind::Udp4 | Kind::Udp6 => {
            let local = if kind == Kind::Udp4 {
                "127.0.0.1:0"
            } else {
                "[::1]:0"
            };
            let s = UdpSocket::bind(local).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s.send_to(data, target).unwrap();
            let mut buf = vec![0u8; 70_000];
            let (n, _) = s.recv_from(&mut buf).unwrap();
            reply.extend_from_slice(&buf[..n]);
        }
        Kind::UnixStream => {
            let mut s = UnixStream::connect(target).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s.write_all(data).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            s.read_to_end(&mut reply).unwrap();
        }
        Kind::UnixDatagram => {
            let me = dir.join(format!("client-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&me);
            let s = UnixDatagram::bind(&me).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s.send_to(data, target).unwrap();
            let mut buf = vec![0u8; 256 * 1024];
            let n = s.recv(&mut buf).unwrap();
            reply.extend_from_slice(&buf[..n]);
        }
        Kind::UnixSeqPacket => {
            use nix::sys::socket::*;
            let fd = socket(
                AddressFamily::Unix,
                SockType::SeqPacket,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .unwrap();
            connect(fd.as_raw_fd(), &UnixAddr::new(target).unwrap()).unwrap();
            send(fd.as_raw_fd(), data, MsgFlags::empty()).unwrap();
            let mut buf = vec![0u8; 256 * 1024];
            let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
            reply.extend_from_slice(&buf[..n]);
        }
    }
    reply
}

#[rstest]
#[case::tcp4(Kind::Tcp4)]
#[case::tcp6(Kind::Tcp6)]
#[case::udp4(Kind::Udp4)]
#[case::udp6(Kind::Udp6)]
#[case::unix_stream(Kind::UnixStream)]
#[case::unix_datagram(Kind::UnixDatagram)]
#[case::unix_seqpacket(Kind::UnixSeqPacket)]
fn echoes_each_kind(#[case] kind: Kind) {
    let dir = tempdir();
    let (fd, address) = make_socket(kind, dir.path(), "echo");
    let _echo = Launch::new(vec![fd]).spawn();

    let result = probe(&address, "hello");
    assert!(result.ok, "{result:?}");
    assert_eq!(result.reply_bytes.as_deref(), Some(&b"hello\n"[..]));

    let data = payload(4000);
    assert_eq!(std_client(kind, &address, &data, dir.path()), data);
}

#[test]
fn serves_every_kind_at_once_with_names() {
    let dir = tempdir();
    let (fds, addresses): (Vec<OwnedFd>, Vec<String>) = ALL_KINDS
        .iter()
        .enumerate()
        .map(|(i, &k)| make_socket(k, dir.path(), &format!("s{i}")))
        .unzip();
    let names = (0..fds.len())
        .map(|i| format!("n{i}"))
        .collect::<Vec<_>>()
        .join(":");
    let echo = Launch::new(fds).names(&names).arg("--debug").spawn();
    for (i, (&kind, address)) in ALL_KINDS.iter().zip(&addresses).enumerate() {
        let text = format!("hello {i}");
        let result = probe(address, &text);
        assert!(result.ok, "{kind:?}: {result:?}");
        let data = payload(1000 + i);
        assert_eq!(
            std_client(kind, address, &data, dir.path()),
            data,
            "{kind:?}"
        );
    }
    // --debug names every fd it serves.
    let log = echo.stderr();
    for i in 0..ALL_KINDS.len() {
        assert!(
            log.contains(&format!("\"n{i}\"")),
            "fd name n{i} missing from: {log}"
        );
    }
}

#[test]
fn serves_eight_sockets_at_once() {
    let dir = tempdir();
    let kinds = [
        Kind::Tcp4,
        Kind::Tcp4,
        Kind::Tcp6,
        Kind::Udp4,
        Kind::Udp6,
        Kind::UnixStream,
        Kind::UnixDatagram,
        Kind::UnixSeqPacket,
    ];
    let (fds, addresses): (Vec<OwnedFd>, Vec<String>) = kinds
        .iter()
        .enumerate()
        .map(|(i, &k)| make_socket(k, dir.path(), &format!("e{i}")))
        .unzip();
    let _echo = Launch::new(fds).spawn();
    for (kind, address) in kinds.iter().zip(&addresses) {
        let result = probe(address, "eight");
        assert!(result.ok, "{kind:?} {address}: {result:?}");
    }
}

#[test]
fn slow_client_does_not_stall_a_fast_one() {
    let dir = tempdir();
    let (fd, address) = make_socket(Kind::Tcp4, dir.path(), "slow");
    let _echo = Launch::new(vec![fd]).spawn();
    let target = address.strip_prefix("tcp4:").unwrap();

    // The slow client sends a lot and never reads: the server's writes to it block.
    let mut slow = TcpStream::connect(target).unwrap();
    slow.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 64 * 1024 * 1024 {
        match slow.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break, // both directions' buffers are full: the server is stuck on us
        }
    }
    assert!(
        sent < 64 * 1024 * 1024,
        "the server kept reading without echoing back"
    );

    // Another client, a stuck half-open one that sent nothing, also must not matter.
    let _silent = TcpStream::connect(target).unwrap();

    for i in 0..20 {
        let result = probe(&address, &format!("fast {i}"));
        assert!(result.ok, "fast client {i} stalled: {result:?}");
    }
}

#[test]
fn max_size_datagrams() {
    let dir = tempdir();
    let (u4, a4) = make_socket(Kind::Udp4, dir.path(), "u4");
    let (ud, ad) = make_socket(Kind::UnixDatagram, dir.path(), "ud");
    let _echo = Launch::new(vec![u4, ud]).spawn();
    // 65507 is the largest UDP/IPv4 payload; Unix datagrams of a full 64 KiB.
    let big = payload(65_507);
    assert_eq!(std_client(Kind::Udp4, &a4, &big, dir.path()), big);
    let big = payload(64 * 1024);
    assert_eq!(std_client(Kind::UnixDatagram, &ad, &big, dir.path()), big);
}

#[test]
fn thousand_sequential_connections() {
    let dir = tempdir();
    let (fd, address) = make_socket(Kind::Tcp4, dir.path(), "seq");
    let _echo = Launch::new(vec![fd]).spawn();
    let target = address.strip_prefix("tcp4:").unwrap();
    for i in 0..1000 {
        let mut s = TcpStream::connect(target).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let msg = format!("connection {i}\n");
        s.write_all(msg.as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, msg);
    }
}

#[test]
fn two_hundred_concurrent_connections() {
    let dir = tempdir();
    let (fd, address) = make_socket(Kind::UnixStream, dir.path(), "conc");
    let _echo = Launch::new(vec![fd]).spawn();
    let target = address.strip_prefix("unix:").unwrap().to_string();
    // All 200 open at once before any sends, so the server holds them all concurrently.
    let conns: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&target).unwrap())
        .collect();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(conns.len()));
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                let data = payload(2000 + i);
                s.write_all(&data).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut reply = Vec::new();
                s.read_to_end(&mut reply).unwrap();
                assert_eq!(reply, data, "connection {i}");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn half_close_gets_the_whole_echo() {
    let dir = tempdir();
    let (fd, address) = make_socket(Kind::UnixStream, dir.path(), "half");
    let _echo = Launch::new(vec![fd]).spawn();
    let mut s = UnixStream::connect(address.strip_prefix("unix:").unwrap()).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    // Several writes, then EOF: the server must echo all of it and only then close.
    let data = payload(300_000);
    let writer = {
        let mut w = s.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || {
            for part in data.chunks(7777) {
                w.write_all(part).unwrap();
            }
            w.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    writer.join().unwrap();
    assert_eq!(reply.len(), data.len());
    assert_eq!(reply, data);
}

#[test]
fn connected_socket_from_accept_yes() {
    // With Accept=yes systemd passes one connected socket per instance.
    let (server_end, mut client) = UnixStream::pair().unwrap();
    let _echo = Launch::new(vec![server_end.into()]).spawn();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.write_all(b"accepted\n").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "accepted\n");
}

#[rstest]
#[case::tcp4(Kind::Tcp4)]
#[case::tcp6(Kind::Tcp6)]
#[case::udp4(Kind::Udp4)]
#[case::udp6(Kind::Udp6)]
fn reply_peer_answers_with_the_client_address(#[case] kind: Kind) {
    let dir = tempdir();
    let (fd, address) = make_socket(kind, dir.path(), "peer");
    let _echo = Launch::new(vec![fd]).arg("--reply-peer").spawn();
    let spec = echo_probe::ProbeSpec {
        address: address.parse().unwrap(),
        send: b"who am i\n".to_vec(),
        expect: echo_probe::Expect::OwnAddress,
        timeout: TIMEOUT,
        keep_open: false,
    };
    let result = echo_probe::probe(&spec);
    assert!(result.ok, "{result:?}");
    let local = result.local_address.clone().unwrap();
    assert_eq!(result.reply.as_deref(), Some(format!("{local}\n").as_str()));
}

#[rstest]
#[case::sigterm(Signal::SIGTERM)]
#[case::sigint(Signal::SIGINT)]
fn exits_promptly_on_signal(#[case] sig: Signal) {
    let dir = tempdir();
    let (fd, address) = make_socket(Kind::Tcp4, dir.path(), "sig");
    let mut echo = Launch::new(vec![fd]).spawn();
    // An open connection must not hold the exit up.
    let _open = TcpStream::connect(address.strip_prefix("tcp4:").unwrap()).unwrap();
    assert!(probe(&address, "up").ok);
    echo.signal(sig);
    // Requirement: within 1 s. The bound here is loose on purpose (shared, noisy machine);
    // what it catches is a server that ignores the signal.
    let (status, took) = echo
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after {sig}"));
    eprintln!("exit after {sig}: {took:?}");
    assert!(status.success(), "{status:?}");
}

#[test]
fn sdnotify_sends_ready_and_status() {
    let dir = tempdir();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (a, _) = make_socket(Kind::Tcp4, dir.path(), "n1");
    let (b, _) = make_socket(Kind::Udp6, dir.path(), "n2");
    let mut launch = Launch::new(vec![a, b]).arg("--sdnotify");
    launch
        .env
        .push(("NOTIFY_SOCKET".into(), path_str(&notify_path)));
    let _echo = launch.spawn();
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(
        msg.lines().any(|l| l == "STATUS=serving 2 socket(s)"),
        "{msg}"
    );
}

/// What a service manager's fd store would keep: duplicates of the listening sockets, with
/// FDSTORE=1 and the name. The received fd is the very listener: it reports listening on
/// the same address.
#[test]
fn fdstore_sends_the_listening_sockets() {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, getsockname, recvmsg};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    let dir = tempdir();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (a, address) = make_socket(Kind::Tcp4, dir.path(), "store");
    let mut launch = Launch::new(vec![a]).arg("--fdstore");
    launch
        .env
        .push(("NOTIFY_SOCKET".into(), path_str(&notify_path)));
    let _echo = launch.spawn();
    let mut buf = [0u8; 512];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        notify.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .unwrap();
    let fds: Vec<RawFd> = msg
        .cmsgs()
        .unwrap()
        .flat_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds,
            _ => Vec::new(),
        })
        .collect();
    let n = msg.bytes;
    assert_eq!(String::from_utf8_lossy(&buf[..n]), "FDSTORE=1\nFDNAME=echo");
    assert_eq!(fds.len(), 1, "{fds:?}");
    // SAFETY: received just now, owned by nothing else.
    let stored = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    let local: SockaddrStorage = getsockname(stored.as_raw_fd()).unwrap();
    assert_eq!(format!("tcp4:{}", local.as_sockaddr_in().unwrap()), address);
    // And the server serves on.
    assert!(probe(&address, "hello").ok);
}

#[test]
fn idle_exit_after_the_last_connection() {
    let dir = tempdir();
    let (fd, address) = make_socket(Kind::Tcp4, dir.path(), "idle");
    let mut echo = Launch::new(vec![fd]).arg("--idle-exit").arg("0.5").spawn();
    {
        // While a connection is open the server stays, however long that is.
        let _open = TcpStream::connect(address.strip_prefix("tcp4:").unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        assert!(echo.is_running(), "exited with a connection open");
    }
    let (status, _) = echo
        .wait_exit(Duration::from_secs(10))
        .expect("no idle exit");
    assert!(status.success());
}

#[test]
fn started_by_systemd_socket_activate() {
    // The real systemd helper: it listens, sets LISTEN_* and execs the server.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg(BIN)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (package systemd) must be installed");
    let address = format!("tcp4:127.0.0.1:{port}");
    let start = Instant::now();
    let result = loop {
        let r = probe(&address, "activated");
        if r.ok || start.elapsed() > TIMEOUT {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50)); // until the helper listens
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(result.ok, "{result:?}");
}

#[test]
#[ignore = "needs AF_VSOCK loopback (modprobe vsock_loopback); the lab's echo-vsock scenario runs it in a guest"]
fn echoes_vsock_stream() {
    use nix::sys::socket::*;
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let port = 40_000 + (std::process::id() % 20_000);
    bind(
        fd.as_raw_fd(),
        &VsockAddr::new(libc::VMADDR_CID_LOCAL, port),
    )
    .expect("bind vsock:1 (vsock_loopback loaded?)");
    listen(&fd, Backlog::new(16).unwrap()).unwrap();
    let _echo = Launch::new(vec![fd]).spawn();
    let result = probe(&format!("vsock:1:{port}"), "vsock");
    assert!(result.ok, "{result:?}");
}

/// inetd style (`StandardInput=socket`): the connection is stdin and stdout, no
/// LISTEN_FDS; the server echoes until the client half-closes, then exits 0.
#[test]
fn inetd_echoes_a_connection_on_stdin_and_stdout() {
    let (mut client, server) = UnixStream::pair().unwrap();
    let server: OwnedFd = server.into();
    let mut child = std::process::Command::new(BIN)
        .arg("--inetd")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .stdin(std::process::Stdio::from(server.try_clone().unwrap()))
        .stdout(std::process::Stdio::from(server))
        .spawn()
        .unwrap();
    client.write_all(b"hello\n").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = [0u8; 6];
    // The reply comes before the client closes: each read is written back at once.
    client.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"hello\n");
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(child.wait().unwrap().success());
}
