//! The environment variables the lab's programs read, in one place: the `vm` crate reads
//! none, so its callers (xtask, the harness, the tests) build its configuration here.

use std::ffi::OsString;
use std::path::PathBuf;

use vm::config::{ACCEL_VAR, ALLOW_EXPIRED_RELEASE_VAR, CACHE_HOME_VAR, Config, DEBIAN_MIRROR_VAR};
use vm::qemu::Accel;
use vm::ready::Binaries;

/// The variables xtask hands the static binaries down in, to the harness and the tests.
pub const ECHO_BIN_VAR: &str = "SAL_ECHO_BIN";
pub const PROBE_BIN_VAR: &str = "SAL_PROBE_BIN";

/// `vm`'s configuration from this process's environment.
pub fn vm_config() -> Config {
    config_from(|name| std::env::var_os(name))
}

/// Sets `vm`'s configuration from this process's environment: every program and test
/// that uses `vm` calls this first (again after changing one of the variables).
pub fn init() {
    vm::config::set(vm_config());
}

/// The configuration the variables `var` returns give: `XDG_CACHE_HOME` (else
/// `$HOME/.cache`, else `/var/tmp`), `SAL_ACCEL` (`kvm`; any other value forces TCG),
/// `SAL_ALLOW_EXPIRED_RELEASE=1`, `SAL_DEBIAN_MIRROR`. Empty values count as unset.
fn config_from(var: impl Fn(&str) -> Option<OsString>) -> Config {
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    let cache_home = set(CACHE_HOME_VAR)
        .map(PathBuf::from)
        .or_else(|| set("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    Config {
        cache_root: Config::cache_root_in(cache_home),
        forced_accel: set(ACCEL_VAR).map(|v| if v == "kvm" { Accel::Kvm } else { Accel::Tcg }),
        allow_expired_release: set(ALLOW_EXPIRED_RELEASE_VAR).is_some_and(|v| v == "1"),
        debian_mirror: set(DEBIAN_MIRROR_VAR).map(|v| v.to_string_lossy().into_owned()),
    }
}

/// The static binaries xtask built (`SAL_ECHO_BIN`, `SAL_PROBE_BIN`); `None` when either
/// is unset.
pub fn binaries() -> Option<Binaries> {
    Some(Binaries {
        echo: std::env::var_os(ECHO_BIN_VAR)?.into(),
        probe: std::env::var_os(PROBE_BIN_VAR)?.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Config {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        config_from(|name| vars.get(name).cloned())
    }

    #[test]
    fn the_variables_fill_the_configuration() {
        let c = config(&[
            ("HOME", "/home/u"),
            ("SAL_ACCEL", "tcg"),
            ("SAL_ALLOW_EXPIRED_RELEASE", "1"),
            ("SAL_DEBIAN_MIRROR", "http://mirror.local/debian"),
        ]);
        assert_eq!(
            c,
            Config {
                cache_root: PathBuf::from("/home/u/.cache/socket-activation-lab"),
                forced_accel: Some(Accel::Tcg),
                allow_expired_release: true,
                debian_mirror: Some("http://mirror.local/debian".into()),
            }
        );
        let c = config(&[
            ("XDG_CACHE_HOME", "/c"),
            ("HOME", "/h"),
            ("SAL_ACCEL", "kvm"),
        ]);
        assert_eq!(c.cache_root, PathBuf::from("/c/socket-activation-lab"));
        assert_eq!(c.forced_accel, Some(Accel::Kvm));
    }

    #[test]
    fn empty_or_unset_variables_leave_the_defaults() {
        let c = config(&[
            ("XDG_CACHE_HOME", ""),
            ("SAL_ACCEL", ""),
            ("SAL_ALLOW_EXPIRED_RELEASE", "yes"),
        ]);
        assert_eq!(
            c,
            Config {
                cache_root: PathBuf::from("/var/tmp/socket-activation-lab"),
                forced_accel: None,
                allow_expired_release: false,
                debian_mirror: None,
            }
        );
    }
}
