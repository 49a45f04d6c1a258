//! The Fedora download path against a real local HTTP server: a fixture image with a good
//! and a bad checksum, an interrupted download that resumes, a server without Range.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vm::events::Events;
use vm::fedora;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Honour `Range:` with 206.
    Ranges,
    /// Ignore `Range:`, always 200 with the whole file.
    NoRanges,
}

/// Requests seen: (path, Range header).
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct Server {
    base: String,
    seen: Seen,
    /// Cut the body of the next N image responses after this many bytes.
    cut_after: Arc<AtomicUsize>,
}

fn serve(files: HashMap<String, Vec<u8>>, mode: Mode) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let cut_after = Arc::new(AtomicUsize::new(0));
    let (seen2, cut2) = (seen.clone(), cut_after.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            handle(conn, &files, mode, &seen2, &cut2);
        }
    });
    Server {
        base,
        seen,
        cut_after,
    }
}

fn handle(
    mut conn: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    mode: Mode,
    seen: &Mutex<Vec<(String, Option<String>)>>,
    cut: &AtomicUsize,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request = String::new();
    reader.read_line(&mut request).unwrap();
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    seen.lock().unwrap().push((path.clone(), range.clone()));
    let Some(body) = files.get(&path) else {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let start = match (&range, mode) {
        (Some(r), Mode::Ranges) => r
            .trim_start_matches("bytes=")
            .trim_end_matches('-')
            .parse::<usize>()
            .unwrap(),
        _ => 0,
    };
    if start >= body.len() && start > 0 {
        let _ = conn.write_all(
            b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    let status = if start > 0 {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let part = &body[start..];
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        part.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let limit = cut.swap(0, Ordering::SeqCst);
    let to_send = if limit > 0 {
        &part[..limit.min(part.len())]
    } else {
        part
    };
    let _ = conn.write_all(to_send);
}

fn fixture() -> (Vec<u8>, String) {
    let image: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let sha = vm::cache::hex(&<sha2::Sha256 as sha2::Digest>::digest(&image));
    (image, sha)
}

const NAME: &str = "Fedora-Cloud-Base-Generic-44-1.6.x86_64.qcow2";

fn files(image: &[u8], checksum_hex: &str) -> HashMap<String, Vec<u8>> {
    HashMap::from([
        (format!("/{NAME}"), image.to_vec()),
        (
            "/CHECKSUM".to_string(),
            format!("# test\nSHA256 ({NAME}) = {checksum_hex}\n").into_bytes(),
        ),
    ])
}

#[test]
fn good_checksum_downloads_and_verifies() {
    let (image, sha) = fixture();
    let server = serve(files(&image, &sha), Mode::Ranges);
    let dir = tempfile::tempdir().unwrap();
    let text = vm::download::fetch_text(&format!("{}/CHECKSUM", server.base)).unwrap();
    let expected = vm::download::checksum_for(&text, NAME).unwrap();
    let dest = dir.path().join(NAME);
    vm::download::download_verified(
        &format!("{}/{NAME}", server.base),
        &expected,
        &dest,
        &Events::silent(),
        "fixture",
    )
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), image);
    assert!(!dest.with_extension("part").exists());
}

#[test]
fn bad_checksum_is_refused_and_nothing_is_kept() {
    let (image, _) = fixture();
    let wrong = "ab".repeat(32);
    let server = serve(files(&image, &wrong), Mode::Ranges);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(NAME);
    let e = vm::download::download_verified(
        &format!("{}/{NAME}", server.base),
        &wrong,
        &dest,
        &Events::silent(),
        "fixture",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("SHA-256 mismatch") && e.contains(&wrong), "{e}");
    assert!(!dest.exists() && !dest.with_extension("part").exists());
}

#[test]
fn interrupted_download_resumes_with_range() {
    let (image, sha) = fixture();
    let server = serve(files(&image, &sha), Mode::Ranges);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(NAME);
    let url = format!("{}/{NAME}", server.base);
    server.cut_after.store(1_000_000, Ordering::SeqCst);
    let first = vm::download::download_verified(&url, &sha, &dest, &Events::silent(), "fixture");
    assert!(
        first.is_err(),
        "a cut connection must not pass as a download"
    );
    let partial = std::fs::metadata(dest.with_extension("part"))
        .unwrap()
        .len();
    assert!(partial > 0 && partial < image.len() as u64, "{partial}");
    vm::download::download_verified(&url, &sha, &dest, &Events::silent(), "fixture").unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), image);
    let seen = server.seen.lock().unwrap();
    assert_eq!(
        seen.last().unwrap().1.as_deref(),
        Some(format!("bytes={partial}-").as_str())
    );
}

#[test]
fn server_without_ranges_restarts_cleanly() {
    let (image, sha) = fixture();
    let server = serve(files(&image, &sha), Mode::NoRanges);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(NAME);
    // A stale partial file from an earlier attempt.
    std::fs::write(dest.with_extension("part"), &image[..12345]).unwrap();
    vm::download::download_verified(
        &format!("{}/{NAME}", server.base),
        &sha,
        &dest,
        &Events::silent(),
        "fixture",
    )
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), image);
}

#[test]
fn missing_file_is_an_http_error() {
    let server = serve(HashMap::new(), Mode::Ranges);
    let e = vm::download::fetch_text(&format!("{}/CHECKSUM", server.base))
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP 404"), "{e}");
}

#[test]
fn seed_disk_is_a_cidata_vfat() {
    if !std::path::Path::new("/sbin/mkfs.vfat").exists()
        && !std::path::Path::new("/usr/sbin/mkfs.vfat").exists()
    {
        panic!(
            "mkfs.vfat (dosfstools) and mcopy (mtools) must be installed; cargo xtask ci installs them"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let seed = fedora::make_seed(dir.path(), "#cloud-config\nhostname: lab\n").unwrap();
    let out = std::process::Command::new("mdir")
        .arg("-i")
        .arg(&seed)
        .arg("-b")
        .arg("::")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("user-data") && listing.contains("meta-data"),
        "{listing}"
    );
    let label = std::process::Command::new("mlabel")
        .arg("-i")
        .arg(&seed)
        .arg("-s")
        .arg("::")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&label.stdout).contains("CIDATA"));
}

/// A clear-signed CHECKSUM verifies with the signer's keyring and fails when tampered
/// with, or with another key (the shipped Fedora 44 key).
#[test]
fn checksum_signature_is_checked_with_gpgv() {
    let home = tempfile::tempdir().unwrap();
    let gpg = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut child = std::process::Command::new("gpg")
            .arg("--homedir")
            .arg(home.path())
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("gpg (package gnupg) is needed to make a test key");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or("").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    gpg(
        &[
            "--quick-gen-key",
            "lab test <lab@example.invalid>",
            "ed25519",
            "sign",
            "never",
        ],
        None,
    );
    let checksum = format!("SHA256 ({NAME}) = {}\n", "ab".repeat(32));
    let signed = String::from_utf8(gpg(&["--clearsign"], Some(&checksum))).unwrap();
    let keyring = home.path().join("signer.gpg");
    std::fs::write(&keyring, gpg(&["--export"], None)).unwrap();

    vm::download::verify_clearsigned(&signed, &keyring).unwrap();
    assert_eq!(
        vm::download::checksum_for(&signed, NAME).unwrap(),
        "ab".repeat(32)
    );

    let tampered = signed.replace(&"ab".repeat(32), &"cd".repeat(32));
    let e = vm::download::verify_clearsigned(&tampered, &keyring)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not verify") && e.contains("signer.gpg"),
        "{e}"
    );

    let fedora_key =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vm/keys/fedora-44.gpg");
    let e = vm::download::verify_clearsigned(&signed, &fedora_key)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not verify"), "{e}");
}
