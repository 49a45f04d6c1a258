//! Scenarios are data (`tests/scenarios/*.toml`): the units, host-side preparation, the
//! steps, the expected outcome and the known upstream bugs. [`schema`] reads and checks
//! the file ([`load`] reads it, [`check`] checks it, [`render`] makes its units), [`files`] reads a scenario directory's files, [`install`] puts what a
//! scenario declares into the guest, [`steps`] runs its steps, [`evidence`] is what they
//! leave, and [`verdict`] decides the outcome from it. The children never use this
//! module; it only ties them together.

pub mod check;
pub mod evidence;
pub mod files;
pub mod install;
pub mod load;
pub mod render;
pub mod schema;
pub mod steps;
pub mod verdict;

use std::collections::BTreeMap;

use anyhow::Result;
use vm::trial_vm::TrialVm;

pub use load::{load_all, load_path};
pub use schema::Scenario;
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
    install::check_images(vm, scenario)?;
    // Named in every step's evidence: computed once.
    let units = scenario.journal_units();
    if let Err(e) = install::prepare_guest(vm, scenario, &runtime.podman_arg, &units) {
        return match e.downcast::<install::UnitsRefused>() {
            Ok(refused) => Ok(verdict::units_refused(&refused.0)),
            Err(e) => Err(e),
        };
    }
    let failure = steps::run_steps(vm, scenario, &runtime.podman_arg, &units)?;
    let journal = evidence::journal(vm, scenario, &units, None);
    std::fs::write(vm.dir.join("journal.txt"), &journal)?;
    Ok(verdict::judge(
        scenario, runtime, versions, failure, &journal,
    ))
}
