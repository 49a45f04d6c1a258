//! Scenarios are data (`tests/scenarios/*.toml`): the units, host-side preparation, the
//! steps, the expected outcome and the known upstream bugs. [`schema`] reads and checks
//! the file, [`steps`] acts on the guest, [`verdict`] decides the outcome from what the
//! steps recorded. The children never use this module; it only ties them together.

pub mod files;
pub mod schema;
pub mod steps;
pub mod verdict;

use std::collections::BTreeMap;

use anyhow::Result;
use vm::trial_vm::TrialVm;

pub use schema::{Scenario, load_all};
pub use verdict::{Verdict, requirements_verdict};

use crate::trial::RuntimeUse;

/// Runs `scenario` with `runtime` on a guest restored to the ready state, and judges the
/// outcome against the expectation and the known bugs for the runtime's version.
pub fn run_on_guest(
    vm: &TrialVm,
    scenario: &Scenario,
    runtime: &RuntimeUse,
    versions: &BTreeMap<String, String>,
) -> Result<Verdict> {
    if let Err(e) = steps::prepare_guest(vm, scenario, &runtime.podman_arg) {
        return match e.downcast::<steps::UnitsRefused>() {
            Ok(refused) => Ok(verdict::units_refused(&refused.0)),
            Err(e) => Err(e),
        };
    }
    let failure = steps::run_steps(vm, scenario, &runtime.podman_arg)?;
    let journal = steps::journal(vm, scenario, None);
    std::fs::write(vm.dir.join("journal.txt"), &journal)?;
    Ok(verdict::judge(
        scenario, runtime, versions, failure, &journal,
    ))
}
