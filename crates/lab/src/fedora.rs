//! Fedora targets: the Cloud Base Generic qcow2, downloaded with progress and resume,
//! verified against the SHA-256 in the release's CHECKSUM file before anything uses it,
//! then provisioned with cloud-init NoCloud (a `cidata` seed disk) into the target's base.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cache::{self, Manifest};
use crate::events::{Event, Events};
use crate::image;
use crate::proc;
use crate::qemu::{self, Boot, MachineSpec, Qemu, VmConfig};
use crate::target::{Source, Target};

/// The SHA-256 a Fedora CHECKSUM file gives for `file`. The file lists lines
/// `SHA256 (NAME) = HEX` (BSD style, possibly inside a PGP clear-signed block) or
/// `HEX  NAME` (coreutils style).
pub fn checksum_for(checksum_text: &str, file: &str) -> Result<String> {
    for line in checksum_text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("SHA256 (") {
            if let Some((name, hex)) = rest.split_once(") = ")
                && name == file
            {
                return valid_hex(hex.trim(), file);
            }
        } else if let Some((hex, name)) = line.split_once(char::is_whitespace)
            && name.trim().trim_start_matches('*') == file
            && hex.len() == 64
        {
            return valid_hex(hex, file);
        }
    }
    bail!("the CHECKSUM file has no SHA256 line for {file}")
}

fn valid_hex(hex: &str, file: &str) -> Result<String> {
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        bail!("the CHECKSUM line for {file} has a malformed SHA-256 {hex:?}")
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into()
}

pub fn fetch_text(url: &str) -> Result<String> {
    let mut resp = agent()
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: HTTP {}", resp.status());
    }
    resp.body_mut()
        .read_to_string()
        .with_context(|| format!("reading {url}"))
}

/// Downloads `url` to `dest`, resuming from `dest.part` when a previous attempt left one
/// (HTTP Range; a server that answers 200 instead of 206 gets a fresh download), then
/// checks the SHA-256. On a mismatch nothing is kept and the error names both hashes.
pub fn download_verified(
    url: &str,
    sha256: &str,
    dest: &Path,
    events: &Events,
    label: &str,
) -> Result<()> {
    let part = dest.with_extension("part");
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent().get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let mut resp = req.call().with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let (mut file, mut done) = match status {
        206 => (OpenOptions::new().append(true).open(&part)?, have),
        200 => (File::create(&part)?, 0),
        // The partial file is already whole (or longer than the resource): start over.
        416 => {
            std::fs::remove_file(&part)?;
            return download_verified(url, sha256, dest, events, label);
        }
        s => bail!("GET {url}: HTTP {s}"),
    };
    if done > 0 {
        events.emit(Event::Note {
            target: label.into(),
            text: format!("resuming download at {done} bytes"),
        });
    }
    let total = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| n + done);
    let step = events.step(label, &format!("downloading {url}"));
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut next_report = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])?;
        done += n as u64;
        // Progress only for downloads worth watching.
        if let Some(t) = total.filter(|t| *t > 8 << 20) {
            let pct = done * 100 / t.max(1);
            if pct >= next_report {
                events.emit(Event::Note {
                    target: label.into(),
                    text: format!("download {pct}% ({} of {} MiB)", done >> 20, t >> 20),
                });
                next_report = pct + 10;
            }
        }
    }
    file.sync_all()?;
    drop(file);
    step.done();
    if let Some(t) = total
        && done != t
    {
        bail!("download of {url} ended at {done} of {t} bytes; run again to resume");
    }
    let actual = cache::sha256_file(&part)?;
    if actual != sha256 {
        std::fs::remove_file(&part)?;
        bail!(
            "SHA-256 mismatch for {url}: the CHECKSUM file says {sha256}, the download is {actual}; the file was deleted"
        );
    }
    std::fs::rename(&part, dest)?;
    Ok(())
}

/// The cloud-init user-data that provisions a Fedora guest like the Debian ones: the test
/// user with subordinate ids and lingering, root's login key, the pinned host key, the
/// packages, `vsock_loopback`; then it powers off. SELinux stays enforcing.
pub fn user_data(target: &Target, login_pub: &str, host_key: &str, host_pub: &str) -> String {
    let user = &target.user;
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    let packages = if target.packages.is_empty() {
        String::new()
    } else {
        let list: String = target
            .packages
            .iter()
            .map(|p| format!("  - {p}\n"))
            .collect();
        format!("packages:\n{list}")
    };
    format!(
        "#cloud-config
hostname: lab
disable_root: false
users:
  - name: {name}
    uid: {uid}
    shell: /bin/bash
    lock_passwd: true
ssh_deletekeys: true
ssh_genkeytypes: []
ssh_keys:
  ed25519_private: |
{private}  ed25519_public: {public}
{packages}write_files:
  - path: /root/.ssh/authorized_keys
    permissions: '0600'
    content: |
      {login}
  - path: /etc/modules-load.d/socket-activation-lab.conf
    content: |
{modules}runcmd:
  - grep -q '^{name}:' /etc/subuid || echo '{name}:100000:65536' >> /etc/subuid
  - grep -q '^{name}:' /etc/subgid || echo '{name}:100000:65536' >> /etc/subgid
  - mkdir -p /var/lib/systemd/linger && touch /var/lib/systemd/linger/{name}
  - if command -v setenforce >/dev/null; then setenforce 1; fi
power_state:
  mode: poweroff
  timeout: 30
",
        login = login_pub.trim(),
        name = user.name,
        uid = user.uid,
        private = indent(host_key),
        public = host_pub.trim(),
        modules = indent(&target.modules.join("\n")),
    )
}

/// A NoCloud seed disk: a vfat file system labelled `cidata` with user-data and meta-data.
pub fn make_seed(dir: &Path, user_data: &str) -> Result<PathBuf> {
    let seed = dir.join("seed.img");
    std::fs::write(dir.join("user-data"), user_data)?;
    std::fs::write(
        dir.join("meta-data"),
        "instance-id: socket-activation-lab\nlocal-hostname: lab\n",
    )?;
    let mut c = Command::new("mkfs.vfat");
    c.args(["-n", "CIDATA", "-C"]).arg(&seed).arg("2048");
    proc::check(c, None, Duration::from_secs(60))?;
    for f in ["user-data", "meta-data"] {
        let mut c = Command::new("mcopy");
        c.arg("-i")
            .arg(&seed)
            .arg(dir.join(f))
            .arg(format!("::{f}"));
        proc::check(c, None, Duration::from_secs(60))?;
    }
    Ok(seed)
}

/// First boot of `dir/disk.qcow2` with a NoCloud seed made from the keys in `dir`:
/// cloud-init provisions the guest and powers it off. `boot` is for disks that boot by
/// direct kernel boot (the Debian guest this path is tested with); Fedora's boots itself.
pub fn provision(target: &Target, dir: &Path, boot: Option<Boot>, events: &Events) -> Result<()> {
    let read = |n: &str| std::fs::read_to_string(dir.join(n));
    let seed = make_seed(
        dir,
        &user_data(
            target,
            &read("id_ed25519.pub")?,
            &read("host_ed25519")?,
            &read("host_ed25519.pub")?,
        ),
    )?;
    let machine = MachineSpec {
        accel: match &boot {
            Some(b) => qemu::decide_accel(&b.kernel),
            None => qemu::detect_accel(),
        },
        memory_mib: target.machine.memory_mib,
        cpus: target.machine.cpus,
    };
    let config = VmConfig {
        machine,
        boot,
        disk: dir.join("disk.qcow2"),
        ssh_port: qemu::free_port()?,
        console_log: dir.join("provision-console.log"),
        incoming: None,
        extra_drives: vec![seed],
    };
    let step = events.step(
        &target.name,
        "cloud-init provisioning (packages, then power off)",
    );
    let mut vm = Qemu::start(config, &dir.join("qemu.log"))?;
    let limit = Duration::from_secs(1800);
    let start = std::time::Instant::now();
    while vm.exited().is_none() {
        if start.elapsed() > limit {
            bail!(
                "cloud-init did not power the guest off within {} s; see {}",
                limit.as_secs(),
                dir.join("provision-console.log").display()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    step.done();
    for f in ["seed.img", "user-data", "meta-data"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    Ok(())
}

/// Checks the clear-signed CHECKSUM `text` with gpgv against `keyring`; an error names
/// the key file and says what gpgv said.
pub fn verify_signature(text: &str, keyring: &Path) -> Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), text)?;
    let mut c = Command::new("gpgv");
    c.arg("--keyring").arg(keyring).arg(file.path());
    let out = proc::run(c, None, Duration::from_secs(60))?;
    if !out.success() {
        bail!(
            "the CHECKSUM signature does not verify with {}:\n{}",
            keyring.display(),
            out.combined().trim()
        );
    }
    Ok(())
}

/// Downloads, verifies and provisions a Fedora target into the base image at `dir`.
pub fn fetch(target: &Target, dir: &Path, events: &Events) -> Result<Manifest> {
    let Source::Fedora {
        image_url,
        checksum_url,
        checksum_key,
        ..
    } = &target.source
    else {
        bail!("{} is not a Fedora target", target.name);
    };
    let file = image_url.rsplit('/').next().unwrap_or("image.qcow2");
    let checksum_text = fetch_text(checksum_url)?;
    match checksum_key {
        Some(_) if crate::proc::on_path("gpgv") => {
            let keyring = target.package_key().expect("a Fedora target with a key");
            verify_signature(&checksum_text, &keyring).with_context(|| format!("CHECKSUM {checksum_url}"))?;
        }
        Some(_) => events.emit(crate::events::Event::Note {
            target: target.name.clone(),
            text: "gpgv is not installed: the CHECKSUM signature is not checked (its SHA-256 still is)".into(),
        }),
        None => {}
    }
    let expected =
        checksum_for(&checksum_text, file).with_context(|| format!("CHECKSUM {checksum_url}"))?;
    let downloads = cache::root().join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let image = downloads.join(file);
    let verified = image.exists() && cache::sha256_file(&image)? == expected;
    if !verified {
        let _ = std::fs::remove_file(&image);
        download_verified(image_url, &expected, &image, events, &target.name)?;
    }

    let stage = cache::stage(dir, &image::base_key(target))?;
    let s = stage.path();
    image::make_keys(s)?;
    let disk = s.join("disk.qcow2");
    std::fs::copy(&image, &disk)?;
    let mut c = Command::new("qemu-img");
    c.args(["resize", "-q"])
        .arg(&disk)
        .arg(format!("{}G", target.machine.disk_gib));
    proc::check(c, None, Duration::from_secs(60))?;
    provision(target, s, None, events)?;
    let facts = BTreeMap::from([
        ("build_id".to_string(), image::build_id()),
        ("sha256".to_string(), expected),
    ]);
    stage.publish(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const HEX: &str = "2f1ec5a1ed7dcb2bd76a5ff5a0e8ab3a0fd9a10b2de8c7e0a1b5fba8d0f3c1e2";

    #[rstest]
    #[case::bsd(format!("# Fedora-Cloud-44\nSHA256 (Fedora-Cloud-Base-Generic-44-1.6.x86_64.qcow2) = {HEX}\nSHA256 (other.raw.xz) = {}\n", "0".repeat(64)))]
    #[case::signed(format!("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSHA256 (Fedora-Cloud-Base-Generic-44-1.6.x86_64.qcow2) = {HEX}\n-----BEGIN PGP SIGNATURE-----\n"))]
    #[case::coreutils(format!("{HEX}  Fedora-Cloud-Base-Generic-44-1.6.x86_64.qcow2\n"))]
    fn finds_the_image_checksum(#[case] text: String) {
        assert_eq!(
            checksum_for(&text, "Fedora-Cloud-Base-Generic-44-1.6.x86_64.qcow2").unwrap(),
            HEX
        );
    }

    #[test]
    fn missing_or_malformed_checksum() {
        let e = checksum_for("SHA256 (a) = 00\n", "b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no SHA256 line for b"), "{e}");
        let e = checksum_for("SHA256 (a) = xyz\n", "a")
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed SHA-256 \"xyz\""), "{e}");
    }

    #[test]
    fn user_data_has_user_keys_and_packages() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../vm/fedora-44.toml");
        let t = Target::load(Path::new(path)).unwrap();
        let ud = user_data(
            &t,
            "ssh-ed25519 AAAA login\n",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n",
            "ssh-ed25519 BBBB host\n",
        );
        assert!(ud.starts_with("#cloud-config\n"));
        assert!(ud.contains("  - path: /root/.ssh/authorized_keys\n    permissions: '0600'\n    content: |\n      ssh-ed25519 AAAA login\n"));
        assert!(ud.contains("  - name: test\n    uid: 1000\n"));
        assert!(ud.contains(
            "  ed25519_private: |\n      -----BEGIN OPENSSH PRIVATE KEY-----\n      abc\n"
        ));
        assert!(ud.contains("  - container-selinux\n"));
        assert!(ud.contains("touch /var/lib/systemd/linger/test"));
        assert!(ud.contains("      vsock_loopback\n"));
    }
}
