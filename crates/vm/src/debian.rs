//! Debian guests built offline with mmdebstrap (the Debian archive is the only network it
//! needs), as an ext4 disk in qcow2 plus the kernel and initrd for direct kernel boot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cache;
use crate::events::{Event, Events};
use crate::guest::SshKeys;
use crate::proc;
use crate::target::{ImageSource, Target};

/// Bump when the build recipe changes in a way the target file does not show.
pub(crate) const RECIPE_VERSION: &str = "debian-base-6";

/// Run inside mmdebstrap's namespace after the packages are installed: `$1` is the root
/// file system, `$2` the staging directory with the keys. Placeholders are filled from the
/// target; the text is part of the cache key.
const CUSTOMIZE: &str = r#"#!/bin/sh
set -eu
R="$1"; STAGE="$2"
# What apt would still install, for the comparison with a user's system (apt_record).
@APT_RECORD@echo lab > "$R/etc/hostname"
# A whole hosts file: bookworm's mmdebstrap leaves none, and without `localhost` a pull
# fails in name resolution before it ever opens a socket.
printf '127.0.0.1\tlocalhost\n127.0.1.1\tlab\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"
echo '/dev/vda / ext4 rw,discard,errors=remount-ro 0 1' > "$R/etc/fstab"
mkdir -p "$R/etc/systemd/network"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n' > "$R/etc/systemd/network/20-wired.network"
printf '%s\n' @MODULES@ > "$R/etc/modules-load.d/socket-activation-lab.conf"
chroot "$R" useradd --create-home --uid @UID@ --shell /bin/bash @USER@
grep -q '^@USER@:' "$R/etc/subuid" 2>/dev/null || echo '@USER@:100000:65536' >> "$R/etc/subuid"
grep -q '^@USER@:' "$R/etc/subgid" 2>/dev/null || echo '@USER@:100000:65536' >> "$R/etc/subgid"
mkdir -p "$R/var/lib/systemd/linger"
touch "$R/var/lib/systemd/linger/@USER@"
mkdir -p "$R/root/.ssh"
chmod 700 "$R/root/.ssh"
cp "$STAGE/id_ed25519.pub" "$R/root/.ssh/authorized_keys"
# The lab logs in with Dropbear: a restored guest runs every code path afresh under TCG,
# and OpenSSH's first login (sshd-session and sshd-auth exec'd with libcrypto) took
# 1.9-2.0 s there against 0.8-1.2 s for Dropbear's (later logins 0.5-0.6 s against
# 0.2-0.3 s), and a trial starts with one. Debian's Dropbear uses no PAM, so the lab's
# root logins open no logind session and start no root user manager, which a login
# after a reboot would wait for. A trial looks at the test user's units, never at a
# root session. An OpenSSH server a target lists would want port 22 too: masked.
rm -f "$R"/etc/dropbear/dropbear_*_host_key "$R"/etc/dropbear/dropbear_*_host_key.pub
cp "$STAGE/host_ed25519" "$R/tmp/lab_host_key"
chroot "$R" dropbearconvert openssh dropbear /tmp/lab_host_key /etc/dropbear/dropbear_ed25519_host_key
rm -f "$R/tmp/lab_host_key"
chroot "$R" systemctl mask ssh.service ssh.socket
chroot "$R" systemctl enable systemd-networkd systemd-resolved
# Timers and waits that only cost boot time in a throwaway guest.
chroot "$R" systemctl mask systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer dpkg-db-backup.timer
# Reach network-online.target at boot (wait-online is masked, so at once): quadlet units
# of podman >= 5 wait for it through podman-user-wait-network-online.service.
chroot "$R" systemctl add-wants multi-user.target network-online.target
# A reboot under TCG is CPU-bound on one vCPU: what a boot starts and the lab never uses
# (hardware the machine model has, mounts and generators for features the guest lacks, a
# login prompt) delays the user manager the trials wait for.
printf 'blacklist %s\n' kvm kvm_amd kvm_intel ahci efi_pstore serio_raw pcspkr iTCO_wdt i2c_i801 lpc_ich powernow_k8 acpi_cpufreq > "$R/etc/modprobe.d/socket-activation-lab.conf"
chroot "$R" systemctl mask modprobe@drm.service modprobe@efi_pstore.service modprobe@configfs.service sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount sys-fs-fuse-connections.mount systemd-network-generator.service systemd-pstore.service getty@tty1.service serial-getty@ttyS0.service e2scrub_reap.service systemd-networkd-persistent-storage.service systemd-udev-load-credentials.service systemd-random-seed.service
chroot "$R" systemctl disable netavark-dhcp-proxy.service
mkdir -p "$R/etc/systemd/system-generators"
for g in systemd-gpt-auto-generator systemd-hibernate-resume-generator systemd-tpm2-generator systemd-ssh-generator systemd-system-update-generator systemd-getty-generator; do ln -s /dev/null "$R/etc/systemd/system-generators/$g"; done
# The user manager runs its generators at start and at every daemon-reload (`enable` does
# one): no XDG autostart files here.
mkdir -p "$R/etc/systemd/user-generators"
ln -s /dev/null "$R/etc/systemd/user-generators/systemd-xdg-autostart-generator"
chroot "$R" systemctl --global mask dirmngr.socket gpg-agent.socket gpg-agent-browser.socket gpg-agent-extra.socket gpg-agent-ssh.socket keyboxd.socket
# The guest boots an initramfs of the lab's own (lab-initrd.img, beside Debian's, which
# stays unused): busybox, the root disk's driver and an /init that loads it, mounts the
# root and hands over to systemd. Debian's (udev, every storage driver of the machine,
# fsck) took 8 s of each boot under TCG, before systemd started.
K=$(ls "$R/lib/modules")
[ "$(echo "$K" | wc -w)" = 1 ] || { echo "lab initramfs: one kernel expected in /lib/modules, found: $K" >&2; exit 1; }
I="$R/tmp/lab-initrd"
mkdir -p "$I/bin" "$I/dev" "$I/proc" "$I/root" "$I/modules"
cp "$R/usr/bin/busybox" "$I/bin/busybox"
# The disk's driver and its PCI transport (built in on trixie's cloud kernel, a module on
# bookworm's), each after what it depends on.
for m in virtio_pci virtio_blk; do chroot "$R" modprobe -S "$K" --show-depends "$m"; done > "$I/modules/depends"
while read -r how path rest; do
  [ "$how" = insmod ] || continue
  name=$(basename "$path"); name=${name%.xz}
  ! grep -qx "$name" "$I/modules/order" 2>/dev/null || continue
  case "$path" in
    *.ko.xz) chroot "$R" busybox unxz -c "$path" > "$I/modules/$name" ;;
    *.ko) cp "$R$path" "$I/modules/$name" ;;
    *) echo "lab initramfs: cannot unpack the module $path" >&2; exit 1 ;;
  esac
  echo "$name" >> "$I/modules/order"
done < "$I/modules/depends"
rm "$I/modules/depends"
grep -qx virtio_blk.ko "$I/modules/order" || { echo "lab initramfs: virtio_blk is not a module of $K" >&2; exit 1; }
cat > "$I/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
fail() { echo "lab initramfs: $*" >&2; sleep 2; poweroff -f; }
mount -t devtmpfs devtmpfs /dev || fail "mounting /dev"
mount -t proc proc /proc || fail "mounting /proc"
for m in $(cat /modules/order); do insmod "/modules/$m" || fail "loading $m"; done
root=; fstype=ext4; mode=ro
for a in $(cat /proc/cmdline); do
  case "$a" in
    root=*) root=${a#root=} ;;
    rootfstype=*) fstype=${a#rootfstype=} ;;
    rw|ro) mode=$a ;;
  esac
done
[ -n "$root" ] || fail "no root= on the kernel command line"
i=0
while [ ! -b "$root" ]; do
  i=$((i + 1)); [ $i -le 600 ] || fail "$root did not appear in 30 s"; sleep 0.05
done
mount -t "$fstype" -o "$mode" "$root" /root || fail "mounting $root ($fstype, $mode)"
umount /proc
mount --move /dev /root/dev || fail "moving /dev to the root"
exec switch_root /root /sbin/init
fail "switch_root to /sbin/init"
INIT
chmod 755 "$I/init"
chroot "$R" sh -c 'cd /tmp/lab-initrd && find . | sort | busybox cpio -o -H newc' > "$R/boot/lab-initrd.img"
rm -rf "$I"
"#;

/// apt installs Recommends by default; mmdebstrap does not unless told.
const RECOMMENDS: &str = "--aptopt=APT::Install-Recommends \"true\"";

/// A setup hook that pins the target's `leave_out` packages away (priority -1), so apt
/// skips them where they are only recommended and fails where something depends on them.
fn leave_out_hook(target: &Target) -> Option<String> {
    if target.leave_out.is_empty() {
        return None;
    }
    let names: Vec<&str> = target.leave_out.keys().map(String::as_str).collect();
    Some(format!(
        "--setup-hook=mkdir -p \"$1/etc/apt/preferences.d\" && printf 'Package: %s\\nPin: version *\\nPin-Priority: -1\\n\\n' {} > \"$1/etc/apt/preferences.d/socket-activation-lab\"",
        names.join(" ")
    ))
}

/// Where the customize script records, for the test that compares the guest with apt,
/// what apt would still install for the target's packages without the lab's pins, and
/// what it would install for the left-out packages alone: the two must be the same.
pub const APT_WOULD_ADD: &str = "/var/lib/socket-activation-lab/apt-would-add";
pub const LEFT_OUT_WOULD_ADD: &str = "/var/lib/socket-activation-lab/left-out-would-add";

/// The customize script's part that records [`APT_WOULD_ADD`] and [`LEFT_OUT_WOULD_ADD`]
/// (apt's lists are still in the tree then), each a sorted list of package names.
fn apt_record(target: &Target) -> String {
    let simulate = |packages: &str, out: &str| {
        format!(
            "chroot \"$R\" apt-get install --simulate -q -o APT::Install-Recommends=true -o Dir::Etc::PreferencesParts=/nonexistent {packages} > \"$R/tmp/sal-simulate\"\n\
             sed -n 's/^Inst \\([^ ]*\\) .*/\\1/p' \"$R/tmp/sal-simulate\" | sort > \"$R{out}\"\n"
        )
    };
    let mut s = "mkdir -p \"$R/var/lib/socket-activation-lab\"\n".to_string();
    s += &simulate(&target.packages.join(" "), APT_WOULD_ADD);
    if target.leave_out.is_empty() {
        s += &format!(": > \"$R{LEFT_OUT_WOULD_ADD}\"\n");
    } else {
        let names: Vec<&str> = target.leave_out.keys().map(String::as_str).collect();
        s += &simulate(&names.join(" "), LEFT_OUT_WOULD_ADD);
    }
    s + "rm -f \"$R/tmp/sal-simulate\"\n"
}

/// What differs between the guest and what apt installs, beyond what the target leaves
/// out on purpose: each package apt would add that the left-out packages do not account
/// for, and each left-out package (or its dependency) that apt would not add anyway.
pub fn unlisted_differences(apt_would_add: &str, left_out_would_add: &str) -> Vec<String> {
    let set = |t: &str| -> std::collections::BTreeSet<String> {
        t.split_whitespace().map(String::from).collect()
    };
    let (apt, left) = (set(apt_would_add), set(left_out_would_add));
    let mut diffs: Vec<String> = apt
        .difference(&left)
        .map(|p| format!("apt would install {p}, which the target does not leave out"))
        .collect();
    diffs.extend(
        left.difference(&apt)
            .map(|p| format!("{p} is left out, but apt would not install it anyway")),
    );
    diffs
}

pub(crate) fn customize_script(target: &Target) -> String {
    CUSTOMIZE
        .replace("@APT_RECORD@", &apt_record(target))
        .replace("@MODULES@", &target.modules.join(" "))
        .replace("@UID@", &target.user.uid.to_string())
        .replace("@USER@", &target.user.name)
}

/// Packages every Debian image gets whatever its target lists: what the customize script
/// itself runs, and the lab's way in. `passwd` (useradd) is no longer pulled in by sid's
/// essential set; `dropbear` is the ssh server the lab logs in through (why: the customize
/// script).
pub const BUILDER_PACKAGES: [&str; 3] = ["passwd", "dropbear", "busybox-static"];

/// Builds a Debian root file system with mmdebstrap into `dir/rootfs.tar`. `customize`
/// is a shell script run on the tree (`$1`) with `dir` as `$2`. Needs root: the tree is
/// unpacked with its owners by [`tar_to_disk`].
pub fn debootstrap(
    suite: &str,
    mirror: &str,
    packages: &[String],
    customize: Option<&str>,
    dir: &Path,
    label: &str,
    events: &Events,
) -> Result<PathBuf> {
    debootstrap_with(suite, mirror, packages, customize, &[], dir, label, events)
}

/// Paths dpkg leaves out of an image nobody reads documentation in.
pub const NO_DOCS: [&str; 3] = [
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
];

/// [`debootstrap`] with more mmdebstrap options (`extra`, before the suite).
#[allow(clippy::too_many_arguments)]
pub fn debootstrap_with(
    suite: &str,
    mirror: &str,
    packages: &[String],
    customize: Option<&str>,
    extra: &[&str],
    dir: &Path,
    label: &str,
    events: &Events,
) -> Result<PathBuf> {
    if !proc::is_root() {
        bail!(
            "building a Debian image needs root (mmdebstrap, and mkfs.ext4 -d of a root-owned tree); run as root or fetch a cached image"
        );
    }
    let tar = dir.join("rootfs.tar");
    let step = events.step(
        label,
        &format!("mmdebstrap {suite} ({} packages)", packages.len()),
    );
    let mut c = Command::new("mmdebstrap");
    // unshare mode: its mounts live in a private namespace and vanish with it, so an
    // interrupted build leaves no mount behind.
    c.args(["--mode=unshare", "--variant=apt", "--format=tar"])
        .arg(format!("--include={}", packages.join(",")));
    if let Some(script) = customize {
        let path = dir.join("customize.sh");
        std::fs::write(&path, script)?;
        c.arg(format!(
            "--customize-hook=sh {} \"$1\" {}",
            path.display(),
            dir.display()
        ));
    }
    let allow_expired = allow_expired_release();
    if allow_expired {
        // A frozen mirror's sid or testing InRelease is past its Valid-Until; the
        // signature is still checked.
        c.arg("--aptopt=Acquire::Check-Valid-Until \"false\"");
    }
    c.args(extra);
    c.arg(suite).arg(&tar).arg(mirror);
    let out = proc::run_own_group(c, Duration::from_secs(1800))?;
    let log = dir.join("mmdebstrap.log");
    let logged = std::fs::write(&log, out.combined());
    let full = out.combined().contains("No space left on device")
        || logged
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOSPC));
    if !out.success() || full {
        let hint = if full {
            format!(
                "\nThe filesystem of {} is full: a Debian image takes about 1.5 GiB while it is \
                 built. Free space there, or point XDG_CACHE_HOME at a larger filesystem.",
                dir.display()
            )
        } else if out.combined().contains("is expired") && !allow_expired {
            format!(
                "\nThe mirror serves an expired {suite} InRelease (a frozen mirror or snapshot?). \
                 Set {}=1 to accept it; its signature is still checked.",
                crate::config::ALLOW_EXPIRED_RELEASE_VAR
            )
        } else {
            String::new()
        };
        bail!(
            "mmdebstrap {suite} failed ({}):\n{}{hint}",
            out.status,
            proc::tail(&out.combined(), 30)
        );
    }
    logged.with_context(|| format!("writing {}", log.display()))?;
    step.done();
    Ok(tar)
}

/// Whether a Debian InRelease past its Valid-Until is accepted ([`crate::config`]).
pub fn allow_expired_release() -> bool {
    crate::config::get().allow_expired_release
}

/// Which initramfs of the image boots it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initrd {
    /// The lab's own (`/boot/lab-initrd.img`, made by the customize script).
    Lab,
    /// The one the kernel package made (`/boot/initrd.img-*`), for an image built without
    /// the customize script.
    Distribution,
}

/// Turns a root file system tar into `dir/disk.qcow2` (whole-disk ext4) plus `vmlinuz` and
/// `initrd.img` for direct kernel boot.
pub fn tar_to_disk(
    tar: &Path,
    dir: &Path,
    disk_gib: u32,
    initrd: Initrd,
    label: &str,
    events: &Events,
) -> Result<()> {
    let step = events.step(label, "ext4 disk and qcow2");
    let rootfs = dir.join("rootfs");
    std::fs::create_dir(&rootfs)?;
    let mut c = Command::new("tar");
    c.args(["--numeric-owner", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(&rootfs);
    proc::check(c, None, Duration::from_secs(600))?;
    std::fs::remove_file(tar)?;
    let boot = rootfs.join("boot");
    let find = |prefix: &str| -> Result<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&boot)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .collect();
        found.sort();
        found.pop().with_context(|| {
            format!("no {prefix}* in the image's /boot (is a kernel package installed?)")
        })
    };
    std::fs::copy(find("vmlinuz-")?, dir.join("vmlinuz"))?;
    match initrd {
        Initrd::Lab => std::fs::copy(boot.join("lab-initrd.img"), dir.join("initrd.img"))
            .context("the image has no /boot/lab-initrd.img (made by the customize script)")?,
        Initrd::Distribution => std::fs::copy(find("initrd.img-")?, dir.join("initrd.img"))?,
    };
    let raw = dir.join("disk.raw");
    let mut c = Command::new("mkfs.ext4");
    c.args(["-q", "-F", "-L", "root", "-d"])
        .arg(&rootfs)
        .arg(&raw)
        .arg(format!("{disk_gib}G"));
    proc::check(c, None, Duration::from_secs(600))?;
    std::fs::remove_dir_all(&rootfs)?;
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(dir.join("disk.qcow2"));
    proc::check(c, None, Duration::from_secs(600))?;
    std::fs::remove_file(&raw)?;
    step.done();
    Ok(())
}

/// Builds `target`'s base image into `dir` under the cache key `key`.
pub fn build(target: &Target, dir: &Path, key: &str, events: &Events) -> Result<cache::Manifest> {
    let ImageSource::Debian {
        suite,
        mirror,
        kernel_package,
        ..
    } = &target.source
    else {
        bail!("{} is not a Debian target", target.name);
    };
    let stage = cache::stage(dir, key)?;
    let s = stage.path();
    SshKeys::generate(s)?;
    let mut packages = vec![kernel_package.to_string()];
    packages.extend(BUILDER_PACKAGES.map(String::from));
    packages.extend(target.packages.iter().cloned());
    let recommends = RECOMMENDS.to_string();
    let pin = leave_out_hook(target);
    let mut extra = vec![recommends.as_str()];
    if let Some(pin) = &pin {
        extra.push(pin);
    }
    let tar = debootstrap_with(
        suite,
        mirror,
        &packages,
        Some(&customize_script(target)),
        &extra,
        s,
        &target.name,
        events,
    )?;
    tar_to_disk(
        &tar,
        s,
        target.machine.disk_gib,
        Initrd::Lab,
        &target.name,
        events,
    )?;
    let facts = BTreeMap::from([
        ("build_id".to_string(), cache::build_id()),
        ("suite".to_string(), suite.to_string()),
    ]);
    events.emit(Event::Note {
        target: target.name.clone(),
        text: format!("base image cached in {}", dir.display()),
    });
    stage.publish(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian_13() -> Target {
        Target::parse(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../vm/debian-13.toml"
            ))
            .unwrap(),
            Path::new("vm/debian-13.toml"),
        )
        .unwrap()
    }

    #[test]
    fn only_what_the_target_leaves_out_may_differ_from_apt() {
        // Nothing left out: apt would add nothing.
        assert!(unlisted_differences("", "").is_empty());
        // cpp left out: apt would add it and its dependencies, and exactly those.
        assert!(unlisted_differences("cpp\ncpp-14\n", "cpp\ncpp-14\n").is_empty());
        assert_eq!(
            unlisted_differences("cpp\nnftables\n", "cpp\n"),
            ["apt would install nftables, which the target does not leave out"]
        );
        assert_eq!(
            unlisted_differences("", "criu\n"),
            ["criu is left out, but apt would not install it anyway"]
        );
    }

    #[test]
    fn recommends_are_installed_and_left_out_packages_pinned_away() {
        crate::config::use_test_defaults();
        let mut t = debian_13();
        let script = customize_script(&t);
        assert!(
            script.contains("apt-get install --simulate -q -o APT::Install-Recommends=true -o Dir::Etc::PreferencesParts=/nonexistent podman crun runc "),
            "{script}"
        );
        t.leave_out.insert("cpp".into(), "size".into());
        t.leave_out.insert("criu".into(), "size".into());
        let hook = leave_out_hook(&t).unwrap();
        assert!(
            hook.contains("Pin-Priority: -1")
                && hook.ends_with(" cpp criu > \"$1/etc/apt/preferences.d/socket-activation-lab\""),
            "{hook}"
        );
        // The pin file as apt reads it, written by the hook's own printf.
        let dir = tempfile::tempdir().unwrap();
        let shell = hook.strip_prefix("--setup-hook=").unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", shell, "sh"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read_to_string(
                dir.path()
                    .join("etc/apt/preferences.d/socket-activation-lab")
            )
            .unwrap(),
            "Package: cpp\nPin: version *\nPin-Priority: -1\n\nPackage: criu\nPin: version *\nPin-Priority: -1\n\n"
        );
    }

    #[test]
    fn customize_fills_every_placeholder() {
        crate::config::use_test_defaults();
        let t = debian_13();
        let s = customize_script(&t);
        // A placeholder is @NAME@; unit names like modprobe@drm.service are not.
        let is_placeholder =
            |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase() || c == '_');
        assert!(CUSTOMIZE.split('@').any(is_placeholder));
        let left: Vec<&str> = s.split('@').filter(|w| is_placeholder(w)).collect();
        assert!(left.is_empty(), "placeholders {left:?} left in:\n{s}");
        assert!(s.contains("useradd --create-home --uid 1000 --shell /bin/bash test"));
        assert!(s.contains("printf '%s\\n' vsock_loopback"));
    }

    #[test]
    fn key_changes_with_the_target_file() {
        crate::config::use_test_defaults();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../vm/debian-13.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let a = Target::parse(&text, Path::new("vm/debian-13.toml")).unwrap();
        let b = Target::parse(
            &text.replace("\"curl\"", "\"curl\", \"socat\""),
            Path::new("vm/debian-13.toml"),
        )
        .unwrap();
        assert_ne!(crate::image::base_key(&a), crate::image::base_key(&b));
    }
}
