//! QEMU's command line, composed from small pure functions (testable without QEMU),
//! and the parsers of what QEMU prints. Nothing here runs a process or reads the host.

use std::path::{Path, PathBuf};

use crate::proc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Everything that decides the guest's hardware. A saved state only loads into a QEMU
/// with the same spec, so its fields are part of the snapshot's cache key.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineSpec {
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
}

impl MachineSpec {
    /// Under TCG, a guest gets no more vCPUs than its share of the host's cores (at least
    /// one): the run's guests then never outnumber the cores with vCPUs, which each need a
    /// host thread to run; the target's count stands where it fits, and under KVM.
    /// Overcommitted, a vCPU spins on a lock whose holder's thread is waiting for a core,
    /// and the second vCPU of a guest that shares one host thread (TCG's
    /// `thread=single`) adds the cost of SMP without running anything beside the first:
    /// measured here (2 cores, `--jobs 2`, the same 26 trials, two interleaved rounds),
    /// 2 vCPUs on one thread each 265.9 and 198.8 s, 1 vCPU 227.6 and 180.1 s.
    pub fn sized_for(self, guests_at_once: usize, host_cores: usize) -> MachineSpec {
        let share = u32::try_from(host_cores / guests_at_once.max(1)).unwrap_or(u32::MAX);
        let cpus = match self.accel {
            Accel::Kvm => self.cpus,
            Accel::Tcg => self.cpus.min(share.max(1)),
        };
        MachineSpec { cpus, ..self }
    }
}

#[derive(Debug, Clone)]
pub struct Boot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub machine: MachineSpec,
    /// Direct kernel boot; `None` boots the disk through firmware (Fedora).
    pub boot: Option<Boot>,
    pub disk: PathBuf,
    /// The host port forwarded to the guest's ssh. 0 lets QEMU bind a free one, read back
    /// by [`Qemu::start`](super::Qemu::start): a port picked here and released before QEMU binds it could be
    /// taken by a trial running beside this one.
    pub ssh_port: u16,
    pub console_log: PathBuf,
    /// Where the guest's memory lives.
    pub ram: Ram,
    /// Load a saved state instead of booting.
    pub incoming: Option<PathBuf>,
    /// Extra drives, e.g. a cloud-init seed.
    pub extra_drives: Vec<PathBuf>,
}

/// Where a guest's memory lives.
///
/// A ready state keeps its memory as a file rather than in its migration stream: the
/// guest that makes it writes its memory through to the file, and its state is saved
/// without that memory (`x-ignore-shared`); a trial's guest maps the file copy-on-write,
/// so it loads only the devices' state and reads a page of memory when it first touches
/// it. Measured here, the load until the VM is paused, interleaved (TCG, 300 MB of
/// memory in use): 0.24-0.99 s from the whole stream, 0.06-0.10 s with the file mapped.
/// The pattern is Kata Containers' VM templating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ram {
    /// QEMU's own anonymous memory.
    Anonymous,
    /// A file the guest's memory is written through to (`share=on`).
    WrittenTo(PathBuf),
    /// A file mapped copy-on-write (`share=off`): the guest starts with the file's
    /// memory and its writes stay its own.
    CopyOf(PathBuf),
}

/// The memory backend's id: the machine's default one (`pc.ram`), so the memory block
/// has the name it has without a backend.
const RAM_ID: &str = "pc.ram";

pub fn ram_args(memory_mib: u32, ram: &Ram) -> Vec<String> {
    let (path, share) = match ram {
        Ram::Anonymous => return Vec::new(),
        Ram::WrittenTo(p) => (p, "on"),
        Ram::CopyOf(p) => (p, "off"),
    };
    // QEMU's option syntax doubles a comma inside a value.
    let path = path.display().to_string().replace(',', ",,");
    vec![
        "-machine".into(),
        format!("memory-backend={RAM_ID}"),
        "-object".into(),
        format!("memory-backend-file,id={RAM_ID},size={memory_mib}M,mem-path={path},share={share}"),
    ]
}

pub fn machine_args(m: &MachineSpec) -> Vec<String> {
    let cpu = match m.accel {
        Accel::Kvm => "host",
        // The fastest model under TCG measured here.
        Accel::Tcg => "qemu64",
    };
    vec![
        "-accel".into(),
        m.accel.name().into(),
        "-machine".into(),
        "q35".into(),
        "-cpu".into(),
        cpu.into(),
        "-m".into(),
        m.memory_mib.to_string(),
        "-smp".into(),
        m.cpus.to_string(),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-device".into(),
        "virtio-rng-pci".into(),
    ]
}

pub fn kernel_args(boot: &Boot) -> Vec<String> {
    vec![
        "-kernel".into(),
        boot.kernel.display().to_string(),
        "-initrd".into(),
        boot.initrd.display().to_string(),
        "-append".into(),
        boot.cmdline.clone(),
    ]
}

pub fn drive_args(disk: &Path, extra: &[PathBuf]) -> Vec<String> {
    // cache=unsafe: the overlay is thrown away after the trial; speed matters, durability
    // does not (the state is flushed before a snapshot is saved).
    let mut args = vec![
        "-drive".into(),
        format!(
            "file={},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
            disk.display()
        ),
    ];
    for d in extra {
        args.push("-drive".into());
        args.push(format!(
            "file={},if=virtio,format=raw,readonly=on",
            d.display()
        ));
    }
    args
}

pub fn net_args(ssh_port: u16) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"),
        "-device".into(),
        "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56".into(),
    ]
}

pub fn console_args(log: &Path, qmp: &Path) -> Vec<String> {
    vec![
        "-serial".into(),
        format!("file:{}", log.display()),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ]
}

/// Which way a migration stream goes through its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFile {
    Save,
    Load,
}

/// The migration URI that saves or loads a state in `file`. QEMU reads and writes the file
/// itself (`file:`) from 8.2 on; an older QEMU (bookworm's 7.2) goes through a pipe to
/// `cat` (`exec:`). The stream is the same either way. Measured here, loading the 346 MB
/// state of debian-13 (memory included, before [`Ram`]) until the VM is paused,
/// interleaved: `exec:cat` 0.58-2.07 s, `file:` 0.30-0.85 s.
pub fn state_uri(file: &Path, direction: StateFile, release: Option<(u32, u32)>) -> String {
    if release.is_some_and(|r| r >= (8, 2)) {
        return format!("file:{}", file.display());
    }
    let path = proc::quote(&file.to_string_lossy());
    match direction {
        StateFile::Save => format!("exec:cat > {path}"),
        StateFile::Load => format!("exec:cat {path}"),
    }
}

/// A state is loaded once QMP is up ([`Qemu::start`](super::Qemu::start)): the capabilities its stream was
/// saved with must be set first.
pub fn incoming_args(state: Option<&Path>) -> Vec<String> {
    match state {
        None => Vec::new(),
        Some(_) => vec!["-incoming".into(), "defer".into()],
    }
}

pub fn args(c: &VmConfig, qmp_socket: &Path) -> Vec<String> {
    let mut a = machine_args(&c.machine);
    if let Some(b) = &c.boot {
        a.extend(kernel_args(b));
    }
    a.extend(drive_args(&c.disk, &c.extra_drives));
    a.extend(net_args(c.ssh_port));
    a.extend(console_args(&c.console_log, qmp_socket));
    a.extend(ram_args(c.machine.memory_mib, &c.ram));
    a.extend(incoming_args(c.incoming.as_deref()));
    a.push("-no-user-config".into());
    a
}

/// The command line that checks whether KVM runs `kernel`: the guest's machine with the
/// host's CPU, the kernel without an initrd (it panics when it finds no root file
/// system; `panic=-1` and `-no-reboot` then end QEMU), its console to `serial`.
pub fn kvm_probe_args(kernel: &Path, serial: &Path) -> Vec<String> {
    let mut a = machine_args(&MachineSpec {
        accel: Accel::Kvm,
        memory_mib: 256,
        cpus: 1,
    });
    a.extend([
        "-no-reboot".into(),
        "-kernel".into(),
        kernel.display().to_string(),
        "-append".into(),
        "console=ttyS0 panic=-1".into(),
        "-serial".into(),
        format!("file:{}", serial.display()),
        "-no-user-config".into(),
    ]);
    a
}

/// The release a `qemu-system-x86_64 --version` line names, as (major, minor).
pub fn release(version_line: &str) -> Option<(u32, u32)> {
    let number = version_line
        .split("version ")
        .nth(1)?
        .split_whitespace()
        .next()?;
    let mut parts = number.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// The host port of the user network's forward to `guest_port`, from HMP `info usernet`:
/// `TCP[HOST_FORWARD]  8  127.0.0.1 36529  10.0.2.15  22  0  0`.
pub fn forwarded_port(usernet: &str, guest_port: u16) -> Option<u16> {
    usernet.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [kind, _fd, _src, host, _dst, guest, ..]
                if kind.starts_with("TCP[HOST_FORWARD]") && *guest == guest_port.to_string() =>
            {
                host.parse().ok()
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            machine: MachineSpec {
                accel: Accel::Tcg,
                memory_mib: 2048,
                cpus: 2,
            },
            boot: Some(Boot {
                kernel: "/c/vmlinuz".into(),
                initrd: "/c/initrd.img".into(),
                cmdline: "root=/dev/vda rw".into(),
            }),
            disk: "/r/disk.qcow2".into(),
            ssh_port: 2222,
            console_log: "/r/console.log".into(),
            ram: Ram::Anonymous,
            incoming: None,
            extra_drives: vec![],
        }
    }

    fn pairs(a: &[String]) -> Vec<(String, String)> {
        a.windows(2).map(|w| (w[0].clone(), w[1].clone())).collect()
    }

    #[test]
    fn tcg_uses_qemu64_and_kvm_the_host_cpu() {
        let mut m = config().machine;
        assert!(pairs(&machine_args(&m)).contains(&("-cpu".into(), "qemu64".into())));
        m.accel = Accel::Kvm;
        let a = machine_args(&m);
        assert!(pairs(&a).contains(&("-cpu".into(), "host".into())));
        assert!(pairs(&a).contains(&("-accel".into(), "kvm".into())));
    }

    #[test]
    fn under_tcg_the_guests_vcpus_never_outnumber_the_cores() {
        let m = config().machine;
        assert_eq!(m.cpus, 2);
        let cpus = |accel, guests, cores| {
            let spec = MachineSpec { accel, ..m.clone() }.sized_for(guests, cores);
            let a = machine_args(&spec);
            assert!(pairs(&a).contains(&("-smp".into(), spec.cpus.to_string())));
            spec.cpus
        };
        // One guest on 2 cores keeps both vCPUs; two guests get one each.
        assert_eq!(cpus(Accel::Tcg, 1, 2), 2);
        assert_eq!(cpus(Accel::Tcg, 2, 2), 1);
        assert_eq!(cpus(Accel::Tcg, 2, 4), 2);
        assert_eq!(cpus(Accel::Tcg, 3, 4), 1);
        // More guests than cores: still one vCPU each, never none.
        assert_eq!(cpus(Accel::Tcg, 3, 2), 1);
        assert_eq!(cpus(Accel::Tcg, 0, 2), 2);
        // A share larger than the target's count gives the target's count.
        assert_eq!(cpus(Accel::Tcg, 1, 16), 2);
        // KVM runs the target's count whatever the run.
        assert_eq!(cpus(Accel::Kvm, 2, 2), 2);
    }

    #[test]
    fn ssh_is_forwarded_on_loopback_only() {
        let a = net_args(40022);
        assert!(
            a.iter()
                .any(|x| x == "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22"),
            "{a:?}"
        );
    }

    #[test]
    fn forwarded_port_is_read_from_info_usernet() {
        // QEMU 10.0's answer for `hostfwd=tcp:127.0.0.1:0-:22`.
        let text = "Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n  TCP[HOST_FORWARD]   8       127.0.0.1 36529       10.0.2.15    22     0     0\r\n";
        assert_eq!(forwarded_port(text, 22), Some(36529));
        assert_eq!(forwarded_port(text, 80), None);
        assert_eq!(forwarded_port("Hub -1 (net0):\n", 22), None);
    }

    #[test]
    fn full_command_line() {
        let mut c = config();
        let a = args(&c, Path::new("/r/qmp.sock"));
        let p = pairs(&a);
        assert!(p.contains(&("-kernel".into(), "/c/vmlinuz".into())));
        assert!(p.contains(&("-append".into(), "root=/dev/vda rw".into())));
        assert!(p.contains(&("-serial".into(), "file:/r/console.log".into())));
        assert!(p.contains(&("-qmp".into(), "unix:/r/qmp.sock,server=on,wait=off".into())));
        assert!(!a.contains(&"-incoming".to_string()));
        assert!(!a.contains(&"-object".to_string()));
        c.incoming = Some("/cache/state mig".into());
        c.boot = None;
        let a = args(&c, Path::new("/r/qmp.sock"));
        // The state itself is loaded over QMP, once its capabilities are set.
        assert!(pairs(&a).contains(&("-incoming".into(), "defer".into())));
        assert!(!a.contains(&"-kernel".to_string()));
    }

    #[test]
    fn memory_from_a_file_is_written_through_or_copied_on_write() {
        assert!(ram_args(2048, &Ram::Anonymous).is_empty());
        let through = ram_args(2048, &Ram::WrittenTo("/stage/ram".into()));
        assert_eq!(
            through,
            [
                "-machine",
                "memory-backend=pc.ram",
                "-object",
                "memory-backend-file,id=pc.ram,size=2048M,mem-path=/stage/ram,share=on"
            ]
        );
        let copy = ram_args(1024, &Ram::CopyOf("/cache/a,b/ram".into()));
        assert_eq!(
            copy[3],
            "memory-backend-file,id=pc.ram,size=1024M,mem-path=/cache/a,,b/ram,share=off"
        );
    }

    #[test]
    fn a_state_file_is_read_by_qemu_itself_from_8_2_and_through_cat_before() {
        let f = Path::new("/cache/state mig");
        let uri = |d, r| state_uri(f, d, r);
        assert_eq!(uri(StateFile::Load, Some((10, 0))), "file:/cache/state mig");
        assert_eq!(uri(StateFile::Save, Some((8, 2))), "file:/cache/state mig");
        assert_eq!(
            uri(StateFile::Load, Some((8, 1))),
            "exec:cat '/cache/state mig'"
        );
        assert_eq!(
            uri(StateFile::Save, Some((7, 2))),
            "exec:cat > '/cache/state mig'"
        );
        // An unreadable version takes the way every QEMU has.
        assert_eq!(uri(StateFile::Load, None), "exec:cat '/cache/state mig'");
    }

    #[test]
    fn release_is_read_from_the_version_line() {
        let line = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)";
        assert_eq!(release(line), Some((10, 0)));
        assert_eq!(
            release("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u16)"),
            Some((7, 2))
        );
        assert_eq!(release("QEMU emulator version 8.2"), Some((8, 2)));
        assert_eq!(release("something else"), None);
        assert_eq!(release("QEMU emulator version x.y"), None);
    }
}
