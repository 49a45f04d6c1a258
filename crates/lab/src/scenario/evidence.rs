//! A trial's evidence as the steps leave it and the verdict and reports read it: the
//! journal of the scenario's units, and the values steps recorded.

use vm::guest::Since;
use vm::trial_vm::TrialVm;

use crate::scenario::files;
use crate::scenario::schema::{Scenario, Scope};

/// The last 300 journal lines of the scenario's `units` ([`Scenario::journal_units`],
/// computed once per trial), logged after `after`, when given.
pub fn journal(
    vm: &TrialVm,
    scenario: &Scenario,
    units: &[String],
    after: Option<Since>,
) -> String {
    // An Accept=yes socket starts a service instance per connection, named after the
    // connection: no name to match in advance, so the test user's whole journal (its
    // user manager, podman, conmon and the containers all log as the user).
    if scenario.scope == Scope::User && !files::accepting_sockets(&scenario.dir_files).is_empty() {
        return vm.guest.user_journal(300, after);
    }
    let refs: Vec<&str> = units.iter().map(String::as_str).collect();
    vm.guest
        .unit_journal(scenario.scope.manager(), &refs, 300, after)
}

/// The trial directory's file of `record`ed values, one `NAME<TAB>VALUE` per line.
pub const MEASUREMENTS: &str = "measurements.tsv";

/// The values the steps recorded in the trial directory `dir`, in step order.
pub fn measurements(dir: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join(MEASUREMENTS))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
