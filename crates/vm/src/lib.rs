//! Guest machines for the lab: targets, the image cache, Debian and Fedora base images,
//! verified downloads, QEMU and QMP, the guest over ssh, the ready state and the VMs
//! trials run in, child processes with deadlines, cleanup on faults and Ctrl-C, and
//! progress events for those steps. It knows nothing of scenarios, runtimes as a matrix
//! axis, verdicts or reports: it does not depend on the `lab` crate.

pub mod apt_sources;
pub mod cache;
pub mod cleanup;
pub mod config;
pub mod container_image;
pub mod debian;
pub mod download;
pub mod events;
pub mod fedora;
pub mod guest;
pub mod image;
pub mod proc;
pub mod prune;
pub mod qemu;
pub mod qmp;
pub mod ready;
pub mod target;
pub mod trial_vm;
