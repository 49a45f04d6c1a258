//! The cloud-init NoCloud provisioning that Fedora targets use, run for real against a
//! Debian guest with cloud-init installed (Fedora images cannot be downloaded here). The
//! provisioned disk is then read offline with debugfs: the test user, its subordinate
//! ids and lingering, root's login key, the pinned host key and vsock_loopback.
//!
//! Needs root, mmdebstrap and a few minutes of QEMU: `cargo xtask ci` runs it with
//! `--ignored`.

use std::path::Path;
use std::process::Command;

use vm::events::{ConsoleReporter, Events};
use vm::qemu::Boot;
use vm::target::Target;

fn debugfs_cat(raw: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(raw)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root, mmdebstrap and minutes of QEMU; cargo xtask ci runs it"]
fn cloud_init_provisions_a_debian_guest() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/debian-13-cloudinit.toml");
    // The library reads no environment; this test gives it what xtask would.
    let cache_home = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache")
        });
    vm::config::set(vm::config::Config {
        cache_root: vm::config::Config::cache_root_in(cache_home),
        forced_accel: None,
        allow_expired_release: std::env::var_os("SAL_ALLOW_EXPIRED_RELEASE")
            .is_some_and(|v| v == "1"),
        debian_mirror: std::env::var("SAL_DEBIAN_MIRROR").ok(),
    });
    let target = Target::load(&fixture).unwrap();
    let events = Events::new(vec![Box::new(ConsoleReporter::new())]);
    let work = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/lab");
    std::fs::create_dir_all(&work).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("cloud-init-")
        .tempdir_in(&work)
        .unwrap();
    let d = dir.path();
    vm::guest::SshKeys::generate(d).unwrap();
    let packages: Vec<String> = [
        "linux-image-cloud-amd64",
        "systemd-sysv",
        "udev",
        "cloud-init",
        "openssh-server",
        "initramfs-tools",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    let tar = vm::debian::debootstrap(
        "trixie",
        "http://deb.debian.org/debian",
        &packages,
        None,
        d,
        &target.name,
        &events,
    )
    .unwrap();
    // Built without the lab's customize script, as a cloud image is: Debian's initramfs.
    vm::debian::tar_to_disk(
        &tar,
        d,
        target.machine.disk_gib,
        vm::debian::Initrd::Distribution,
        &target.name,
        &events,
    )
    .unwrap();
    let boot = Boot {
        kernel: d.join("vmlinuz"),
        initrd: d.join("initrd.img"),
        cmdline: vm::image::KERNEL_CMDLINE.into(),
    };
    vm::fedora::provision(&target, d, Some(boot), &events).unwrap();

    let raw = d.join("disk.raw");
    let ok = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(d.join("disk.qcow2"))
        .arg(&raw)
        .status()
        .unwrap();
    assert!(ok.success());
    let console = std::fs::read_to_string(d.join("provision-console.log")).unwrap_or_default();
    let context = format!("console tail:\n{}", vm::proc::tail(&console, 30));

    let passwd = debugfs_cat(&raw, "/etc/passwd");
    assert!(
        passwd.lines().any(|l| l.starts_with("test:x:1000:")),
        "no test user with uid 1000\n{context}"
    );
    assert!(
        debugfs_cat(&raw, "/etc/subuid").contains("test:100000:65536"),
        "{context}"
    );
    assert!(
        debugfs_cat(&raw, "/etc/subgid").contains("test:100000:65536"),
        "{context}"
    );
    let linger = Command::new("debugfs")
        .arg("-R")
        .arg("stat /var/lib/systemd/linger/test")
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&linger.stdout).contains("Inode:"),
        "no lingering\n{context}"
    );
    let login = std::fs::read_to_string(d.join("id_ed25519.pub")).unwrap();
    let login_key = login.split_whitespace().nth(1).unwrap();
    assert!(
        debugfs_cat(&raw, "/root/.ssh/authorized_keys").contains(login_key),
        "root login key missing\n{context}"
    );
    let host = std::fs::read_to_string(d.join("host_ed25519.pub")).unwrap();
    let host_key = host.split_whitespace().nth(1).unwrap();
    assert!(
        debugfs_cat(&raw, "/etc/ssh/ssh_host_ed25519_key.pub").contains(host_key),
        "host key not pinned\n{context}"
    );
    assert!(
        debugfs_cat(&raw, "/etc/modules-load.d/socket-activation-lab.conf")
            .contains("vsock_loopback"),
        "{context}"
    );
}
