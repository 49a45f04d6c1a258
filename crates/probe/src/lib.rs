//! echo-probe as a library: the same code the `echo-probe` binary runs, callable from
//! tests. Knows nothing of the lab; speaks to any echo server.

pub mod address;
pub mod bench;
pub mod conn;
pub mod inherited;
pub mod netinfo;
pub mod probe;

pub use address::{Address, Exchange};
pub use bench::{BenchResult, BenchSpec, bench};
pub use probe::{Expect, Failure, ProbeResult, ProbeSpec, probe};
