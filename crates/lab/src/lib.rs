//! The lab engine: targets, images, QEMU, guest control, scenarios, trials. Emits events;
//! the CLI (xtask) and reporters render them.

pub mod cache;
pub mod cleanup;
pub mod dnf;
pub mod events;
pub mod fedora;
pub mod guest;
pub mod image;
pub mod netbench;
pub mod proc;
pub mod qemu;
pub mod qmp;
pub mod report;
pub mod run;
pub mod runtimes;
pub mod scenario;
pub mod target;
pub mod units;
pub mod version;
pub mod vm;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    (unsafe { libc::geteuid() }) == 0
}
