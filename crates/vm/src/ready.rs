//! The ready state a trial's guest starts from ([`crate::trial_vm`]) rather than booting.
//!
//! The ready state is a guest booted once to where trials begin (ssh up, the test user's
//! manager running, the echo image and the lab's other container images
//! ([`crate::container_image`]) in its podman storage), then stopped and saved: its
//! memory as a file (`ram`, written through by the guest, see [`Ram`]), its devices as a
//! QEMU migration stream without that memory (`state.mig`), beside its disk, a qcow2
//! overlay of the base that is frozen from then on. A trial starts a QEMU with the memory
//! file mapped copy-on-write and the stream loaded on a fresh overlay of that frozen disk:
//! memory and disk come back as saved, in about 0.1 s under TCG (ssh up 0.7-0.8 s)
//! instead of a 23-34 s boot.
//!
//! Why a migration stream and not an internal qcow2 snapshot (`savevm`/`-loadvm`): the
//! internal snapshot lives in the one writable image, so trials could not each have their
//! own overlay and could not run side by side; the stream, the memory file and overlays
//! give every trial a private copy of memory and disk from read-only files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::events::Events;
use crate::guest::Guest;
use crate::image::{self, BaseImage, KERNEL_CMDLINE};
use crate::qemu::{self, Accel, Boot, MachineSpec, Qemu, Ram, VmConfig};
use crate::target::Target;
use crate::{cache, container_image};

/// Bump when provisioning changes in a way the inputs do not show.
const READY_RECIPE: &str = "ready-8";
/// The echo image every ready state holds: `FROM scratch` with the two static binaries.
pub const ECHO_IMAGE: &str = "localhost/socket-activate-echo:latest";

/// A pod created and removed by the test user. podman 4.0 to 5.4 build a pod's infra
/// image (localhost/podman-pause, from catatonit) with a user's first pod, so every pod
/// and kube trial built it again (its journal: `image build`); here it is built once, as
/// on a machine that has had a pod before. From 5.5 the infra container runs catatonit
/// from an overlay and there is nothing to build (podman PR 25789).
const FIRST_POD: &str = "podman pod create --name sal-ready-first-pod >/dev/null && \
                         podman pod rm sal-ready-first-pod >/dev/null";

/// The static binaries put into every guest and into the echo image.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub echo: PathBuf,
    pub probe: PathBuf,
}

/// What provisioning puts into the guest: the static binaries (and the echo image made
/// of them), and the other container images as built on the host.
struct Contents<'a> {
    bins: &'a Binaries,
    images: &'a [(&'static str, PathBuf)],
}

/// Timeouts scale with the accelerator: TCG is 10-20x slower than KVM.
pub fn boot_timeout(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_secs(120),
        Accel::Tcg => Duration::from_secs(300),
    }
}

#[derive(Debug, Clone)]
pub struct Ready {
    pub target: Target,
    pub base: BaseImage,
    pub dir: PathBuf,
    pub machine: MachineSpec,
    /// Versions read from the guest when the state was saved.
    pub versions: BTreeMap<String, String>,
}

/// The fact under which a ready state records the QEMU that saved it: a migration
/// stream loads only into a QEMU that can read it, so another version means another state.
const QEMU_FACT: &str = "qemu";

fn ready_key(
    base: &BaseImage,
    machine: &MachineSpec,
    cmdline: &str,
    qemu_version: &str,
    bins: &Binaries,
    images: &[(&str, PathBuf)],
) -> Result<String> {
    let base_manifest = serde_json::to_string(&base.manifest)?;
    // An image is named by its cache entry's directory, whose name carries its key (not
    // by its path: the same state in a cache elsewhere is the same state).
    let images: String = images
        .iter()
        .map(|(name, tar)| {
            let entry = tar.parent().and_then(Path::file_name).unwrap_or_default();
            format!("{name}={}\n", entry.to_string_lossy())
        })
        .collect();
    Ok(cache::key(&[
        ("images", images.as_bytes()),
        ("base", base_manifest.as_bytes()),
        ("recipe", READY_RECIPE.as_bytes()),
        // The saved kernel runs with the command line it booted with; a reboot would
        // take the new one, so a state saved under another line is another state.
        ("cmdline", cmdline.as_bytes()),
        ("machine", format!("{machine:?}").as_bytes()),
        ("qemu", qemu_version.as_bytes()),
        ("echo", cache::sha256_file(&bins.echo)?.as_bytes()),
        ("probe", cache::sha256_file(&bins.probe)?.as_bytes()),
    ]))
}

/// The guest's hardware; the accelerator is decided with the base image's kernel.
pub fn machine_for(target: &Target, base: &BaseImage) -> MachineSpec {
    MachineSpec::for_target(target, base.kernel.as_ref().map(|(k, _)| k.as_path()))
}

/// The ready state's memory, in its directory ([`Ram`]).
pub(crate) const RAM_FILE: &str = "ram";
/// The ready state's devices (a migration stream without the memory), in its directory.
pub(crate) const STATE_FILE: &str = "state.mig";

pub(crate) fn vm_config(
    base: &BaseImage,
    machine: &MachineSpec,
    disk: &Path,
    dir: &Path,
    ram: Ram,
    incoming: Option<PathBuf>,
) -> Result<VmConfig> {
    Ok(VmConfig {
        machine: machine.clone(),
        boot: base.kernel.as_ref().map(|(k, i)| Boot {
            kernel: k.clone(),
            initrd: i.clone(),
            cmdline: KERNEL_CMDLINE.into(),
        }),
        disk: disk.to_path_buf(),
        ssh_port: 0,
        console_log: dir.join("console.log"),
        ram,
        incoming,
        extra_drives: Vec::new(),
    })
}

/// Copies the logs of a failed build (its staging directory is removed) to a directory
/// under the cache's `failed/`: that directory, or the one it could not copy them to.
fn keep_logs(stage: &Path, entry: &Path) -> std::result::Result<PathBuf, PathBuf> {
    let name = entry
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let kept = cache::root().join("failed").join(format!("{name}-{now}"));
    let copied = std::fs::create_dir_all(&kept).is_ok()
        && std::fs::read_dir(stage).is_ok_and(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .all(|e| std::fs::copy(e.path(), kept.join(e.file_name())).is_ok())
        });
    if copied { Ok(kept) } else { Err(kept) }
}

/// The target's ready state from the cache, made first if missing.
pub fn ensure_ready(target: &Target, bins: &Binaries, events: &Events) -> Result<Ready> {
    crate::cleanup::install_handler();
    let base = image::ensure_base(target, events)?;
    let machine = machine_for(target, &base);
    let qemu_version = qemu::version()?;
    // Built on the host (mmdebstrap) before the lock: a build of the state waits for them.
    let images = container_image::ensure_all(target, events)?;
    let key = ready_key(
        &base,
        &machine,
        KERNEL_CMDLINE,
        &qemu_version,
        bins,
        &images,
    )?;
    let dir = cache::root().join("images").join(format!(
        "{}-ready-{}-{key}",
        target.name,
        machine.accel.name()
    ));
    let _lock = cache::lock(&dir)?;
    let usable = cache::lookup_keyed(&dir, &key).filter(|m| {
        let saved_by = m.facts.get(QEMU_FACT);
        let same = saved_by == Some(&qemu_version);
        if !same {
            eprintln!(
                "{}: the ready state was saved by {}, this is {qemu_version}: rebuilding it",
                dir.display(),
                saved_by.map_or("an unrecorded QEMU", String::as_str)
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
        same
    });
    let manifest = match usable {
        Some(m) => m,
        None => make_ready(
            target,
            &base,
            &machine,
            &Contents {
                bins,
                images: &images,
            },
            &dir,
            &key,
            events,
        )?,
    };
    let mut versions = manifest.facts;
    versions.remove(QEMU_FACT);
    Ok(Ready {
        target: target.clone(),
        base,
        dir,
        machine,
        versions,
    })
}

fn make_ready(
    target: &Target,
    base: &BaseImage,
    machine: &MachineSpec,
    contents: &Contents,
    dir: &Path,
    key: &str,
    events: &Events,
) -> Result<cache::Manifest> {
    let stage = cache::stage(dir, key)?;
    match boot_and_provision(target, base, machine, contents, stage.path(), events) {
        Ok(facts) => stage.publish(facts),
        Err(e) => {
            Err(match keep_logs(stage.path(), dir) {
                // The error names files in the staging directory, which is about to go:
                // name the kept copies instead.
                Ok(kept) => anyhow::anyhow!(
                    "{}",
                    format!("{e:#}").replace(
                        &stage.path().display().to_string(),
                        &kept.display().to_string()
                    )
                )
                .context(format!("logs kept in {}", kept.display())),
                Err(tried) => e.context(format!(
                    "logs could not be kept (copying to {} failed)",
                    tried.display()
                )),
            })
        }
    }
}

/// Boots the overlay in `s`, provisions it and saves the state there; the facts to publish.
fn boot_and_provision(
    target: &Target,
    base: &BaseImage,
    machine: &MachineSpec,
    contents: &Contents,
    s: &Path,
    events: &Events,
) -> Result<BTreeMap<String, String>> {
    let disk = s.join("disk.qcow2");
    image::overlay(&base.disk, &disk)?;
    let config = vm_config(
        base,
        machine,
        &disk,
        s,
        Ram::WrittenTo(s.join(RAM_FILE)),
        None,
    )?;
    let console = config.console_log.clone();
    let step = events.step(
        &target.name,
        &format!("cold boot ({})", machine.accel.name()),
    );
    let mut qemu = Qemu::start(config, &s.join("qemu.log"))?;
    let guest = Guest::connect(
        qemu.config.ssh_port,
        base.keys.clone(),
        target.user.clone(),
        boot_timeout(machine.accel),
        &console,
        Some(&s.join("provision.log")),
        &mut || qemu.gone(&s.join("qemu.log")),
    )?;
    step.done();

    let step = events.step(&target.name, "provisioning the ready state");
    let versions = provision(&guest, contents, &target.runtimes).with_context(|| {
        format!(
            "provisioning {} (log: {})",
            target.name,
            s.join("provision.log").display()
        )
    })?;
    drop(guest); // closes the ssh master before the state is frozen
    step.done();

    let step = events.step(&target.name, "saving the ready state");
    let uri = qemu::state_uri(
        &s.join(STATE_FILE),
        qemu::StateFile::Save,
        qemu::running_release(),
    );
    qemu.qmp.ignore_shared_memory()?;
    qemu.qmp.save_state(&uri, Duration::from_secs(300))?;
    qemu.quit()?;
    step.done();
    let mut facts = versions;
    facts.insert(QEMU_FACT.into(), qemu::version()?);
    Ok(facts)
}

/// Brings a freshly booted guest to the ready state and reads its versions.
fn provision(
    guest: &Guest,
    contents: &Contents,
    runtimes: &[String],
) -> Result<BTreeMap<String, String>> {
    let Contents { bins, images } = contents;
    let t = Duration::from_secs(300);
    let state = guest.root("systemctl is-system-running --wait", t)?;
    let state = state.stdout.trim().to_string();
    if state != "running" {
        let failed = guest
            .root("systemctl --failed --no-legend --plain", t)?
            .stdout;
        if state != "degraded" {
            bail!("the guest's system manager is {state:?}; failed units:\n{failed}");
        }
    }
    guest.copy_in(&bins.echo, "/usr/local/bin/socket-activate-echo", 0o755)?;
    guest.copy_in(&bins.probe, "/usr/local/bin/echo-probe", 0o755)?;
    // The user manager runs by lingering; wait until it is up.
    guest.user_ok(
        "systemctl --user is-system-running --wait || systemctl --user is-system-running",
        t,
    )?;
    // The echo image: FROM scratch, the two static binaries, no registry involved; in
    // the test user's storage and in root's (rootful quadlets and services).
    let import_echo = format!(
        "set -e; tar -C /usr/local/bin -c socket-activate-echo echo-probe | podman import --quiet \
         --change 'ENTRYPOINT [\"/socket-activate-echo\"]' --change 'USER 65534:65534' \
         --change 'LABEL org.opencontainers.image.source=socket-activation-lab' - {ECHO_IMAGE} >/dev/null; \
         podman image exists {ECHO_IMAGE}"
    );
    guest.user_ok(&import_echo, t)?;
    guest.root_ok(&import_echo, t)?;
    // The other images, imported once here rather than in each trial that uses one
    // (measured, TCG: 32.6 s for `podman import` of the 37 MB systemd image, of a
    // 51.5 s systemd-pid1 trial).
    for (name, tar) in *images {
        let remote = format!("/var/tmp/sal-{name}.tar.gz");
        guest.copy_in(tar, &remote, 0o644)?;
        let changes: String = container_image::import_changes(name)
            .iter()
            .map(|c| format!(" --change {}", crate::proc::quote(c)))
            .collect();
        guest.user_ok(
            &format!(
                "podman import --quiet{changes} {remote} {} >/dev/null",
                container_image::local_name(name)
            ),
            t,
        )?;
        guest.root_ok(&format!("rm -f {remote}"), t)?;
    }
    // One container with each runtime, on podman's default network: a trial's first
    // `podman run` then finds the runtime, conmon, the network helper and the image's
    // files in the page cache, as on a machine that has run a container before, instead
    // of reading them through the emulated disk (measured: a first run after the restore
    // took 3.4 s with them read beforehand against 4.0 s without, TCG).
    for runtime in runtimes {
        guest.user_ok(
            &format!("podman run --rm --runtime {runtime} {ECHO_IMAGE} --version >/dev/null"),
            t,
        )?;
    }
    guest.user_ok(FIRST_POD, t)?;
    let mut versions = BTreeMap::new();
    let mut scripts: Vec<(&str, String)> = Vec::new();
    // podman's network stack: what a user-defined network or pasta runs on.
    for p in NETWORK_PACKAGES {
        scripts.push((
            p,
            format!(
                "dpkg-query -W -f='${{Version}}' {p} 2>/dev/null || rpm -q --qf '%{{VERSION}}' {p} 2>/dev/null || true"
            ),
        ));
    }
    for (name, script) in [
        ("podman", "podman --version | awk '{print $3}'"),
        ("runc", "runc --version | awk 'NR==1{print $3}'"),
        ("crun", "crun --version | awk 'NR==1{print $3}'"),
        ("systemd", "systemctl --version | awk 'NR==1{print $2}'"),
        // conmon relays the container's sd_notify messages (STATUS= from 2.1.9 on).
        ("conmon", "conmon --version | awk 'NR==1{print $3}'"),
        ("kernel", "uname -r"),
        ("os", ". /etc/os-release && echo \"$PRETTY_NAME\""),
        // Only on SELinux guests (Fedora); known bugs of a component a guest lacks do not apply.
        (
            "container-selinux",
            "rpm -q --qf '%{VERSION}' container-selinux 2>/dev/null || true",
        ),
    ]
    .map(|(n, s)| (n, s.to_string()))
    .into_iter()
    .chain(scripts)
    {
        let out = guest.root(&script, t)?;
        let value = out.stdout.trim();
        if !value.is_empty() && !value.contains("not installed") {
            versions.insert(name.to_string(), value.to_string());
        }
    }
    guest.root_ok("sync", t)?;
    Ok(versions)
}

/// The versions recorded by `target`'s most recent ready state in the cache (any
/// accelerator or key), read without building anything; `None` when there is none.
pub fn cached_versions(target: &str) -> Option<BTreeMap<String, String>> {
    let prefix = format!("{target}-ready-");
    let mut entries: Vec<(std::time::SystemTime, BTreeMap<String, String>)> =
        std::fs::read_dir(cache::root().join("images"))
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(&prefix) && !name.ends_with(".lock")
            })
            .filter_map(|e| {
                let m = cache::lookup(&e.path())?;
                let when = e.metadata().and_then(|md| md.modified()).ok()?;
                Some((when, m.facts))
            })
            .collect();
    entries.sort_by_key(|(when, _)| *when);
    entries.pop().map(|(_, facts)| facts)
}

/// The guest's components a reader of a run wants beside its verdicts (`doctor`, the
/// summary's header), as the ready state recorded their versions.
pub const GUEST_COMPONENTS: [&str; 9] = [
    "podman",
    "conmon",
    "netavark",
    "aardvark-dns",
    "passt",
    "slirp4netns",
    "crun",
    "runc",
    "systemd",
];

/// The packages of podman's network stack whose versions a ready state records.
pub const NETWORK_PACKAGES: [&str; 4] = ["netavark", "aardvark-dns", "passt", "slirp4netns"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_saved_under_another_kernel_command_line_is_another_state() {
        let tmp = tempfile::tempdir().unwrap();
        let bins = Binaries {
            echo: tmp.path().join("echo"),
            probe: tmp.path().join("probe"),
        };
        std::fs::write(&bins.echo, b"echo").unwrap();
        std::fs::write(&bins.probe, b"probe").unwrap();
        let base = BaseImage {
            dir: tmp.path().into(),
            disk: tmp.path().join("disk.qcow2"),
            kernel: None,
            keys: crate::guest::SshKeys {
                identity: tmp.path().join("id"),
                known_hosts: tmp.path().join("known_hosts"),
            },
            manifest: cache::Manifest {
                key: "base".into(),
                files: BTreeMap::new(),
                facts: BTreeMap::new(),
            },
        };
        let machine = MachineSpec {
            accel: Accel::Tcg,
            memory_mib: 2048,
            cpus: 2,
        };
        let key = |cmdline| ready_key(&base, &machine, cmdline, "10.0.2", &bins, &[]).unwrap();
        assert_eq!(key(KERNEL_CMDLINE), key(KERNEL_CMDLINE));
        assert_ne!(key(KERNEL_CMDLINE), key("root=/dev/vda rw console=ttyS0"));

        // The images: another image is another state; the same one in a cache elsewhere
        // (a copied cache, another XDG_CACHE_HOME) is the same state.
        let with = |tar: &str| {
            let images = [("systemd", PathBuf::from(tar))];
            ready_key(&base, &machine, KERNEL_CMDLINE, "10.0.2", &bins, &images).unwrap()
        };
        let a = "/a/images/container-systemd-trixie-9cbb/rootfs.tar.gz";
        assert_eq!(
            with(a),
            with("/b/images/container-systemd-trixie-9cbb/rootfs.tar.gz")
        );
        assert_ne!(
            with(a),
            with("/a/images/container-systemd-trixie-1234/rootfs.tar.gz")
        );
        assert_ne!(with(a), key(KERNEL_CMDLINE));
    }
}
