//! `NAME@VERSION` runtimes of Fedora targets, installed with dnf. Fedora's repositories
//! cannot be reached here, so the guest is a Debian one with dnf installed
//! (`tests/fixtures/debian-13-dnf.toml`), and its repository is a real local one: runc
//! from Debian trixie repackaged as an RPM named like Fedora's, signed with a throwaway key,
//! indexed with createrepo_c and served over HTTP by this test. The production fetch and
//! install run against it: repoquery, download, the signature check on the host, the
//! cache, dnf install, the version read back, and a socket-activated echo trial.
//!
//! The signature checks run in every `cargo test` (they need rpm and gnupg); the VM test
//! needs root, mmdebstrap, the static binaries and minutes of QEMU: `cargo xtask ci` runs
//! it with `--ignored`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lab::events::Events;
use lab::runtimes::RuntimeSpec;
use lab::scenario::Scenario;
use lab::trial::{Outcome, RuntimeUse};
use vm::ready::ECHO_IMAGE;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (packages rpm, createrepo-c, gnupg)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A throwaway signing key: its gpg home and its public key as a binary keyring (the
/// form vm/keys holds).
struct Key {
    home: PathBuf,
    public: PathBuf,
}

fn make_key(dir: &Path, name: &str) -> Key {
    let home = dir.join(format!("gnupg-{name}"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    run(Command::new("gpg").arg("--homedir").arg(&home).args([
        "--batch",
        "--quiet",
        "--passphrase",
        "",
        "--quick-gen-key",
        name,
        "rsa2048",
        "sign",
        "never",
    ]));
    let public = dir.join(format!("{name}.gpg"));
    let key = run(Command::new("gpg")
        .arg("--homedir")
        .arg(&home)
        .args(["--batch", "--export"]));
    std::fs::write(&public, key).unwrap();
    Key { home, public }
}

/// `name-version-1.fc43.x86_64.rpm` holding `binary` as /usr/bin/`name`, signed with
/// `key` when there is one.
fn make_rpm(dir: &Path, name: &str, version: &str, binary: &Path, key: Option<&Key>) -> PathBuf {
    let spec = dir.join(format!("{name}-{version}.spec"));
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: {version}\nRelease: 1.fc43\nSummary: test fixture\nLicense: Apache-2.0\nAutoReqProv: no\n%global debug_package %{{nil}}\n%global __os_install_post %{{nil}}\n%description\nA test fixture.\n%install\nmkdir -p %{{buildroot}}/usr/bin\ninstall -m 0755 {} %{{buildroot}}/usr/bin/{name}\n%files\n/usr/bin/{name}\n",
            binary.display()
        ),
    )
    .unwrap();
    let top = dir.join("rpmbuild");
    run(Command::new("rpmbuild")
        .args(["-bb", "--quiet", "--define"])
        .arg(format!("_topdir {}", top.display()))
        .arg(&spec));
    let rpm = top
        .join("RPMS/x86_64")
        .join(format!("{name}-{version}-1.fc43.x86_64.rpm"));
    if let Some(k) = key {
        run(Command::new("rpmsign")
            .arg("--addsign")
            .args(["--define", "__gpg /usr/bin/gpg", "--define"])
            .arg(format!("_gpg_name {}", key_name(k)))
            .arg("--define")
            .arg(format!("_gpg_path {}", k.home.display()))
            .arg(&rpm)
            .stdin(std::process::Stdio::null()));
    }
    rpm
}

fn key_name(k: &Key) -> String {
    k.public.file_stem().unwrap().to_string_lossy().into_owned()
}

#[test]
fn rpm_signatures_are_checked_against_the_release_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let signer = make_key(d, "signer");
    let other = make_key(d, "other");
    let payload = d.join("payload");
    std::fs::write(&payload, "#!/bin/sh\necho runc version 9.9\n").unwrap();
    let signed = make_rpm(d, "runc", "9.9", &payload, Some(&signer));
    let unsigned = make_rpm(d, "runc", "9.8", &payload, None);

    lab::runtimes::dnf::verify_signatures(std::slice::from_ref(&signed), &signer.public).unwrap();
    let e = format!(
        "{:#}",
        lab::runtimes::dnf::verify_signatures(std::slice::from_ref(&signed), &other.public)
            .unwrap_err()
    );
    assert!(
        e.contains("runc-9.9-1.fc43.x86_64.rpm: the signature does not verify with")
            && e.contains("other.gpg")
            && e.contains("SIGNATURES NOT OK"),
        "{e}"
    );
    // An unsigned package has good digests, and that is not enough.
    let e = format!(
        "{:#}",
        lab::runtimes::dnf::verify_signatures(&[signed, unsigned], &signer.public).unwrap_err()
    );
    assert!(
        e.contains("runc-9.8-1.fc43.x86_64.rpm: the signature does not verify")
            && e.contains("digests OK"),
        "{e}"
    );
    // The Fedora release keys shipped in vm/keys load (binary keyrings, armored for rpm).
    let fedora = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vm/keys/fedora-43.gpg");
    let e = format!(
        "{:#}",
        lab::runtimes::dnf::verify_signatures(
            &[make_rpm(d, "crun", "1.0", &payload, Some(&signer))],
            &fedora
        )
        .unwrap_err()
    );
    assert!(e.contains("SIGNATURES NOT OK"), "{e}");
}

/// A static file server over `root` (GET and HEAD, one request per connection) that
/// counts the requests it answers.
struct Server {
    port: u16,
    requests: Arc<AtomicUsize>,
}

fn serve(root: PathBuf) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            handle(conn, &root);
        }
    });
    Server { port, requests }
}

fn handle(mut conn: TcpStream, root: &Path) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or("/").trim_start_matches('/');
    let file = root.join(path);
    let body = (!path.contains("..") && file.is_file())
        .then(|| std::fs::read(&file).ok())
        .flatten();
    let _ = match body {
        Some(b) => {
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                b.len()
            );
            if method == "GET" {
                conn.write_all(&b)
            } else {
                Ok(())
            }
        }
        None => conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
}

fn upstream_version(debian_version: &str) -> String {
    debian_version
        .split(['+', '-', '~'])
        .next()
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "needs root, mmdebstrap, the static binaries and minutes of QEMU; cargo xtask ci runs it"]
fn dnf_installs_a_runtime_version_from_the_targets_repositories() {
    lab::host_env::init();
    let bins = lab::host_env::binaries()
        .expect("SAL_ECHO_BIN and SAL_PROBE_BIN: the static binaries (cargo xtask build-static)");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target =
        vm::target::Target::load(&manifest.join("tests/fixtures/debian-13-dnf.toml")).unwrap();
    let events = Events::console();
    let work = manifest.join("../../target/lab");
    std::fs::create_dir_all(&work).unwrap();
    // Kept when the test fails (the trial's commands.log, journal and console are in it),
    // removed at the end when it passes.
    let dir = tempfile::Builder::new()
        .prefix("dnf-")
        .tempdir_in(&work)
        .unwrap()
        .keep();
    eprintln!("logs: {}", dir.display());
    let d = dir.as_path();

    // The repository: runc from Debian trixie, under Fedora-like names; 1.0.0 left
    // unsigned. A stable suite, because its InRelease carries no Valid-Until: sid's does,
    // and a frozen mirror's sid expires, so a test taking it passes only from a cache.
    let trixie: RuntimeSpec = "runc@trixie".parse().unwrap();
    let runc =
        lab::runtimes::archive::fetch_package(&trixie, "http://deb.debian.org/debian", &events)
            .unwrap();
    let version = upstream_version(&runc.debian_version);
    let key = make_key(d, "lab-fixture");
    make_rpm(d, "runc", &version, &runc.binary, Some(&key));
    make_rpm(d, "runc", "1.0.0", &runc.binary, None);
    let repo = d.join("rpmbuild/RPMS");
    run(Command::new("createrepo_c").arg("--quiet").arg(&repo));
    let server = serve(repo);

    let ready = vm::ready::ensure_ready(&target, &bins, events.machine()).unwrap();
    let vm = vm::trial_vm::TrialVm::start(&ready, &d.join("trial"), events.machine()).unwrap();
    let g = &vm.guest;
    // QEMU's user network reaches the host's loopback at 10.0.2.2.
    let repo_file = format!(
        "[lab-fixture]\nname=lab fixture\nbaseurl=http://10.0.2.2:{}/\ngpgcheck=0\nmetadata_expire=0\n",
        server.port
    );
    g.write_file(
        "/etc/yum.repos.d/lab-fixture.repo",
        repo_file.as_bytes(),
        None,
        0o644,
    )
    .unwrap();
    let cached = vm::cache::root().join("runtimes/dnf").join(&target.name);
    let _ = std::fs::remove_dir_all(&cached);
    let fetch = |spec: &str| {
        let spec: RuntimeSpec = spec.parse().unwrap();
        lab::runtimes::dnf::download(g, &target.name, &spec, &key.public, &events)
    };

    let e = format!("{:#}", fetch("runc@9.9").unwrap_err());
    eprintln!("runc@9.9: {e}");
    assert!(
        e.contains(&format!(
            "runc 9.9 is not in debian-13-dnf's repositories; they have 1.0.0-1.fc43, {version}-1.fc43"
        )),
        "{e}"
    );
    let e = format!("{:#}", fetch("runc@1.0.0").unwrap_err());
    eprintln!("runc@1.0.0: {e}");
    assert!(
        e.contains("runc-1.0.0-1.fc43.x86_64.rpm: the signature does not verify"),
        "{e}"
    );

    let spec = format!("runc@{version}");
    let fetched = fetch(&spec).unwrap();
    assert_eq!(fetched.nevra, format!("runc-{version}-1.fc43.x86_64"));
    assert_eq!(fetched.rpms.len(), 1, "{:?}", fetched.rpms);
    // The second fetch is the host cache's: the repository sees no request.
    let before = server.requests.load(Ordering::SeqCst);
    let again = fetch(&spec).unwrap();
    assert_eq!(
        (again.nevra.as_str(), server.requests.load(Ordering::SeqCst)),
        (fetched.nevra.as_str(), before)
    );

    let installed = lab::runtimes::dnf::install(g, &fetched, ECHO_IMAGE)
        .unwrap()
        .unwrap_or_else(|lab::runtimes::install::Unusable(why, _)| panic!("unusable: {why}"));
    assert_eq!(installed.podman_arg, "/usr/bin/runc");
    assert!(
        installed.version.starts_with(&version),
        "{} read back, {version} packaged",
        installed.version
    );
    let rpm_q = g
        .root_ok("rpm -q runc", std::time::Duration::from_secs(60))
        .unwrap();
    assert_eq!(rpm_q.stdout.trim(), fetched.nevra);

    let scenario = Scenario::load(&manifest.join("../../tests/scenarios/echo-tcp4.toml")).unwrap();
    let mut versions: BTreeMap<String, String> = ready.versions.clone();
    versions.insert(spec.clone(), installed.version.clone());
    let runtime = RuntimeUse {
        name: "runc".into(),
        podman_arg: installed.podman_arg.clone(),
        version: installed.version.clone(),
        source: None,
        commit: None,
    };
    let verdict = lab::scenario::run_on_guest(&vm, &scenario, &runtime, &versions).unwrap();
    assert_eq!(verdict.outcome, Outcome::Pass, "{}", verdict.detail);
    // The container really ran under the installed runc: podman records the runtime.
    let info = g
        .user_ok(
            "podman inspect --format '{{.OCIRuntime}}' echo",
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(info.stdout.trim(), "/usr/bin/runc", "{}", info.combined());
    drop(vm);
    std::fs::remove_dir_all(&dir).unwrap();
}
