//! What the library takes from its caller instead of reading the environment: the
//! cache's root, a forced accelerator, whether an expired Debian InRelease is accepted,
//! and an archive that overrides the host's. The caller (xtask, the harness, a test)
//! builds a [`Config`], usually from the environment (`lab::host_env`), and [`set`]s it
//! before calling anything else here.
//!
//! Held process-wide rather than passed to each call: the cache root alone is read in
//! some twenty places of this crate and of lab, and the faults tests swap the cache
//! between cases in one process, which [`set`] allows.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::qemu::args::Accel;

/// The environment variable names callers read these from; messages tell users to set
/// them, so they live here with the fields they fill.
pub const CACHE_HOME_VAR: &str = "XDG_CACHE_HOME";
pub const ACCEL_VAR: &str = "SAL_ACCEL";
pub const ALLOW_EXPIRED_RELEASE_VAR: &str = "SAL_ALLOW_EXPIRED_RELEASE";
pub const DEBIAN_MIRROR_VAR: &str = "SAL_DEBIAN_MIRROR";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where images, ready states, downloads and builds are kept
    /// (`$XDG_CACHE_HOME/socket-activation-lab`).
    pub cache_root: PathBuf,
    /// `Some` when the user chose the accelerator; `None`: decided by probing.
    pub forced_accel: Option<Accel>,
    /// Accept a Debian InRelease past its Valid-Until (a frozen mirror); its signature
    /// is still checked.
    pub allow_expired_release: bool,
    /// A Debian archive for every Debian target, over the host's apt sources.
    pub debian_mirror: Option<String>,
}

impl Config {
    /// The cache root under a cache home (`$XDG_CACHE_HOME`, else `$HOME/.cache`).
    pub fn cache_root_in(cache_home: PathBuf) -> PathBuf {
        cache_home.join("socket-activation-lab")
    }
}

static CONFIG: RwLock<Option<Arc<Config>>> = RwLock::new(None);

/// Makes `config` the one every later call uses (replacing an earlier one).
pub fn set(config: Config) {
    *CONFIG.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(config));
}

/// The configuration [`set`] last.
///
/// # Panics
/// When nothing was set: a caller's mistake, found by its first test.
pub fn get() -> Arc<Config> {
    CONFIG
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .expect(
            "vm::config::set was not called: build a vm::config::Config (lab::host_env::init does, from the environment) before using the vm crate",
        )
}

/// For unit tests that load targets or name cache paths but build nothing: sets, unless
/// something is set already, a configuration with nothing forced or overridden and the
/// cache under the system's temporary directory.
pub fn use_test_defaults() {
    let mut config = CONFIG.write().unwrap_or_else(|e| e.into_inner());
    if config.is_none() {
        *config = Some(Arc::new(Config {
            cache_root: Config::cache_root_in(std::env::temp_dir().join("sal-unit-tests")),
            forced_accel: None,
            allow_expired_release: false,
            debian_mirror: None,
        }));
    }
}
