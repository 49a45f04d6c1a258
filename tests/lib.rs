//! Nothing to link: this package exists for its `matrix` test (`tests/matrix.rs`), the
//! libtest-mimic harness over the scenario files in `tests/scenarios/`.
