//! Fedora targets: the Cloud Base Generic qcow2, downloaded with progress and resume,
//! verified against the SHA-256 in the release's CHECKSUM file before anything uses it,
//! then provisioned with cloud-init NoCloud (a `cidata` seed disk) into the target's base.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cache::{self, Manifest};
use crate::download;
use crate::events::{Event, Events};
use crate::guest::SshKeys;
use crate::proc;
use crate::qemu::{Boot, MachineSpec, Qemu, VmConfig};
use crate::target::{ImageSource, Target};

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
    let machine = MachineSpec::for_target(target, boot.as_ref().map(|b| b.kernel.as_path()));
    let config = VmConfig {
        machine,
        boot,
        disk: dir.join("disk.qcow2"),
        ssh_port: 0,
        console_log: dir.join("provision-console.log"),
        ram: crate::qemu::Ram::Anonymous,
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

/// Downloads, verifies and provisions a Fedora target into the base image at `dir`.
pub fn download_and_provision(
    target: &Target,
    dir: &Path,
    key: &str,
    events: &Events,
) -> Result<Manifest> {
    let ImageSource::Fedora {
        image_url,
        checksum_url,
        checksum_key,
        ..
    } = &target.source
    else {
        bail!("{} is not a Fedora target", target.name);
    };
    let file = image_url.rsplit('/').next().unwrap_or("image.qcow2");
    let checksum_text = download::fetch_text(checksum_url)?;
    match checksum_key {
        Some(_) if proc::runs("gpgv") => {
            let keyring = target.package_key().expect("a Fedora target with a key");
            download::verify_clearsigned(&checksum_text, &keyring)
                .with_context(|| format!("CHECKSUM {checksum_url}"))?;
        }
        Some(_) => events.emit(Event::Note {
            target: target.name.clone(),
            text: "gpgv is not installed: the CHECKSUM signature is not checked (its SHA-256 still is)".into(),
        }),
        None => {}
    }
    let expected = download::checksum_for(&checksum_text, file)
        .with_context(|| format!("CHECKSUM {checksum_url}"))?;
    let downloads = cache::root().join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let image = downloads.join(file);
    let verified = image.exists() && cache::sha256_file(&image)? == expected;
    if !verified {
        let _ = std::fs::remove_file(&image);
        download::download_verified(image_url, &expected, &image, events, &target.name)?;
    }

    let stage = cache::stage(dir, key)?;
    let s = stage.path();
    SshKeys::generate(s)?;
    let disk = s.join("disk.qcow2");
    std::fs::copy(&image, &disk)?;
    let mut c = Command::new("qemu-img");
    c.args(["resize", "-q"])
        .arg(&disk)
        .arg(format!("{}G", target.machine.disk_gib));
    proc::check(c, None, Duration::from_secs(60))?;
    provision(target, s, None, events)?;
    let facts = BTreeMap::from([
        ("build_id".to_string(), cache::build_id()),
        ("sha256".to_string(), expected),
    ]);
    stage.publish(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

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
