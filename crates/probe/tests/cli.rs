//! The echo-probe binary against small std servers made by the test.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_echo-probe");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A TCP echo for `n` connections, a thread each (they are served at once, as by any
/// real server).
fn tcp_echo(n: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp4:{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().take(n) {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => s.write_all(&buf[..k]).unwrap(),
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn tcp_probe_passes_on_the_expected_reply() {
    let addr = tcp_echo(1);
    let o = run(&[&addr, "--send", "hello", "--expect", "hello"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, b"hello\n");
}

#[test]
fn tcp_probe_fails_on_another_reply() {
    let addr = tcp_echo(1);
    let o = run(&[&addr, "--send", "hello", "--expect", "bye"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("expected \"bye\\n\", got \"hello\\n\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn json_result() {
    let addr = tcp_echo(1);
    let o = run(&[&addr, "--send", "x", "--expect", "x", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["reply"], "x\n");
    assert_eq!(v["address"], addr);
    assert!(
        v["local_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
}

#[test]
fn refused_connection_fails_with_reason() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = run(&[&format!("tcp4:127.0.0.1:{port}"), "--expect", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("Connection refused"), "{}", stderr(&o));
}

#[test]
fn udp_probe_returns_with_the_reply() {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = format!("udp4:{}", s.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (n, peer) = s.recv_from(&mut buf).unwrap();
        s.send_to(&buf[..n], peer).unwrap();
    });
    // A 60 s timeout: the test finishing at all shows the probe did not wait it out.
    let o = run(&[&addr, "--expect", "hello", "--timeout", "60", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["elapsed_ms"].as_f64().unwrap() < 60_000.0);
}

#[test]
fn udp_probe_without_reply_times_out() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = format!("udp4:{}", silent.local_addr().unwrap());
    let o = run(&[&addr, "--timeout", "0.3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("timed out waiting for the reply"),
        "{}",
        stderr(&o)
    );
}

fn failure_kind(args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--json");
    let o = run(&all);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    v["failure"].as_str().unwrap_or("(none)").to_string()
}

#[test]
fn failures_say_their_kind() {
    // Nothing listens.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_eq!(
        failure_kind(&[&format!("tcp4:127.0.0.1:{port}")]),
        "refused"
    );
    // A datagram to a closed port: ICMP port unreachable.
    assert_eq!(
        failure_kind(&[&format!("udp4:127.0.0.1:{port}"), "--timeout", "5"]),
        "refused"
    );
    // A listener that accepts and resets (linger 0, as a socket unit whose service
    // failed does to the connections it queued).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let reset = format!("tcp4:{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        nix::sys::socket::setsockopt(
            &s,
            nix::sys::socket::sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(s);
    });
    assert_eq!(failure_kind(&[&reset, "--timeout", "10"]), "reset");
    // Accepted, never answered.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let quiet = format!("tcp4:{}", silent.local_addr().unwrap());
    assert_eq!(failure_kind(&[&quiet, "--timeout", "0.3"]), "no-reply");
    // Another reply.
    let addr = tcp_echo(1);
    assert_eq!(failure_kind(&[&addr, "--expect", "bye"]), "mismatch");
    // No such socket file.
    assert_eq!(
        failure_kind(&["unix:/nonexistent/echo.sock"]),
        "connect-error"
    );
    drop(silent);
}

#[test]
fn bad_address_is_a_usage_error() {
    let o = run(&["tcp4:localhost"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("address \"tcp4:localhost\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bench_reports_round_trips() {
    let addr = tcp_echo(2);
    let o = run(&[
        "bench",
        &addr,
        "--connections",
        "2",
        "--seconds",
        "0.3",
        "--size",
        "512",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["round_trips"].as_u64().unwrap() > 0);
    assert_eq!(v["connections"], 2);
    assert!(v["p99_us"].as_f64().unwrap() >= v["p50_us"].as_f64().unwrap());
    assert_eq!(v["errors"].as_array().unwrap().len(), 0);
}

#[test]
fn netinfo_lists_loopback_and_tries_an_echo_round_trip_outbound() {
    let echo = tcp_echo(1);
    let o = run(&["netinfo", "--outbound", &echo, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let lo = v["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "lo")
        .expect("lo listed");
    assert!(
        lo["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "127.0.0.1/8"),
        "{lo}"
    );
    assert_eq!(v["outbound"]["connected"], true);
    assert_eq!(v["outbound"]["echoed"], true, "{}", v["outbound"]);

    // The kernel completes the handshake of a listener that never accepts: connected,
    // but nobody echoes.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = format!("tcp4:{}", silent.local_addr().unwrap());
    let o = run(&["netinfo", "--outbound", &open, "--timeout", "1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["outbound"]["connected"], true, "{}", v["outbound"]);
    assert_eq!(v["outbound"]["echoed"], false, "{}", v["outbound"]);
    let o = run(&["netinfo", "--outbound", &open, "--timeout", "1"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("outbound {open}: connected, no echo")),
        "{text}"
    );

    drop(silent);
    let o = run(&["netinfo", "--outbound", &open]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(&format!("outbound {open}: failed")), "{text}");
}

/// A server like systemd-socket-proxyd on a client's half-close: it reads the request,
/// waits a little, and drops the connection without answering if the client has sent
/// EOF by then; otherwise it answers with what it read.
fn drops_on_half_close(n: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp4:{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().take(n) {
            let mut s = s.unwrap();
            let mut buf = [0u8; 64];
            let k = s.read(&mut buf).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            s.set_nonblocking(true).unwrap();
            let mut more = [0u8; 1];
            if matches!(s.read(&mut more), Ok(0)) {
                continue; // EOF: closed without an answer
            }
            s.write_all(&buf[..k]).unwrap();
        }
    });
    addr
}

#[test]
fn keep_open_gets_the_answer_a_half_close_loses() {
    let addr = drops_on_half_close(2);
    let o = run(&[&addr, "--send", "hello", "--expect", "hello"]);
    assert!(!o.status.success(), "the half-closing probe was answered");
    let o = run(&[&addr, "--send", "hello", "--expect", "hello", "--keep-open"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, b"hello\n");
}

#[test]
fn keep_open_needs_an_expected_reply() {
    let o = run(&["tcp4:127.0.0.1:9", "--keep-open"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// A server that answers `reply` to a connection and keeps it open until the client
/// closes, as systemd-socket-proxyd in front of an echo server does.
fn answers_and_stays_open(reply: &'static [u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp4:{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).unwrap();
        s.write_all(reply).unwrap();
        // Until the client goes: read to its EOF and past it.
        while !matches!(s.read(&mut buf), Ok(0) | Err(_)) {}
        std::thread::sleep(std::time::Duration::from_secs(60));
    });
    addr
}

/// A wrong byte fails the probe at once, even when the server keeps the connection (the
/// mismatch, not the deadline's no-reply); a reply that is still the beginning of the
/// expected one is waited for.
#[rstest::rstest]
#[case::wrong_byte(b"iello\n", "5", "mismatch", "iello\n")]
#[case::beginning(b"hel", "1", "no-reply", "hel")]
fn a_reply_that_cannot_become_the_expected_one_ends_the_probe(
    #[case] reply: &'static [u8],
    #[case] timeout: &str,
    #[case] failure: &str,
    #[case] seen: &str,
) {
    let addr = answers_and_stays_open(reply);
    let args = [
        &addr,
        "--send",
        "hello",
        "--expect",
        "hello",
        "--timeout",
        timeout,
        "--json",
    ];
    let o = run(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["failure"], failure, "{v}");
    assert_eq!(v["reply"], seen, "{v}");
}
