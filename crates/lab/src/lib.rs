//! The lab: scenarios (schema, steps, verdict), runtimes as a matrix axis (the target's
//! own, a Debian suite's package, a dnf version), trials and runs, reports, and the
//! methods benchmark. Guests come from the `vm` crate; this crate emits events and the
//! CLI (xtask) and reporters render them.

pub mod bisect;
pub mod events;
pub mod host_env;
pub mod mutant;
pub mod netbench;
pub mod report;
pub mod run;
pub mod runtimes;
pub mod scenario;
pub mod trial;
pub mod units;
pub mod version;
pub mod workspace;
