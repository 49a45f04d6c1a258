//! Puts a runtime into the guest (the target's own, a suite's package with its libraries
//! and a wrapper where they are needed) and checks podman can run a container with it.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use vm::guest::Guest;

use crate::runtimes::RuntimeSpec;
use crate::runtimes::archive::SuitePackage;

/// What a trial passes to podman as `--runtime`, and the version it reports.
#[derive(Debug, Clone)]
pub struct Installed {
    pub podman_arg: String,
    pub version: String,
}

/// Why a runtime cannot be used on this guest, for a reason the lab has decided is an
/// incompatibility and not a fault (a glibc newer than the guest's; an error listed in
/// [`INCOMPATIBLE`]): the trial is a SKIP with this text. The version, when the binary
/// could tell it. Every other failure to install or run the runtime is a FAIL.
#[derive(Debug, Clone)]
pub struct Unusable(pub String, pub Option<String>);

/// The first line of `RUNTIME --version` as a version (`runc version 1.1.15+ds1` ->
/// `1.1.15+ds1`, `crun version 1.21` -> `1.21`).
pub fn parse_version(output: &str) -> Option<String> {
    let first = output.lines().next()?;
    let v = first.split_whitespace().nth(2)?;
    Some(v.to_string())
}

/// Errors of the trivial container that mean this runtime version and this podman cannot
/// work together, each with why; any other error of it is a FAIL of the trial.
pub const INCOMPATIBLE: [(&str, &str); 1] = [(
    "unknown version specified",
    "the runtime does not accept the OCI runtime-spec version this podman writes (seen: crun 0.17 with podman 5)",
)];

/// The reason from [`INCOMPATIBLE`] that `output` (the trivial container's) shows, if any.
pub fn incompatibility(output: &str) -> Option<&'static str> {
    INCOMPATIBLE
        .iter()
        .find(|(text, _)| output.contains(text))
        .map(|(_, why)| *why)
}

/// Makes `spec` usable in the guest and checks it can run a container there.
pub fn install(
    guest: &Guest,
    spec: &RuntimeSpec,
    fetched: Option<&SuitePackage>,
    image: &str,
) -> Result<std::result::Result<Installed, Unusable>> {
    let t = Duration::from_secs(120);
    let podman_arg = match fetched {
        None => spec.name.clone(),
        Some(f) => {
            let dir = format!("/opt/socket-activation-lab/runtimes/{spec}");
            let real = format!("{dir}/{}.bin", spec.name);
            guest.copy_in(&f.binary, &real, 0o755)?;
            let libs = std::fs::read(&f.lib_dir)?;
            let out = guest.root_stdin(
                &format!("mkdir -p {dir}/lib && tar -C {dir}/lib -xf -"),
                Some(&libs),
                t,
            )?;
            if !out.success() {
                bail!(
                    "unpacking {spec}'s libraries in the guest: {}",
                    out.combined()
                );
            }
            // Use the guest's libraries when they satisfy the binary; the suite's own
            // otherwise (a newer crun may need newer libyajl or libseccomp).
            let ldd = guest.root(&format!("ldd {real} 2>&1"), t)?.combined();
            let glibc_missing = ldd
                .lines()
                .find(|l| l.contains("GLIBC_") && l.contains("not found"));
            if let Some(line) = glibc_missing {
                let why = format!(
                    "{spec} needs a newer glibc than the guest's: {}",
                    line.trim()
                );
                return Ok(Err(Unusable(why, None)));
            }
            let path = format!("{dir}/{}", spec.name);
            // When the guest's libraries do, the binary itself is the runtime (runc
            // re-executes /proc/self/exe); otherwise a wrapper adds the suite's libraries.
            if ldd.contains("not found") {
                let wrapper = format!("#!/bin/sh\nLD_LIBRARY_PATH={dir}/lib exec {real} \"$@\"\n");
                guest.write_file(&path, wrapper.as_bytes(), None, 0o755)?;
            } else {
                guest.root_ok(&format!("ln -sf {real} {path}"), t)?;
            }
            let check = guest.root(
                &format!("LD_LIBRARY_PATH={dir}/lib ldd {real} 2>&1 | grep 'not found' || true"),
                t,
            )?;
            if !check.stdout.trim().is_empty() {
                bail!(
                    "{spec}: libraries not found even with the suite's own: {}",
                    check.stdout.trim()
                );
            }
            path
        }
    };
    usable(guest, spec, podman_arg, image)
}

/// Reads the version of the runtime at `podman_arg` and checks that podman can run a
/// container with it.
pub fn usable(
    guest: &Guest,
    spec: &RuntimeSpec,
    podman_arg: String,
    image: &str,
) -> Result<std::result::Result<Installed, Unusable>> {
    let t = Duration::from_secs(120);
    let out = guest.root(&format!("{podman_arg} --version"), t)?;
    let version = parse_version(&out.stdout)
        .with_context(|| format!("`{podman_arg} --version` printed {:?}", out.combined()))?;
    // A trivial container proves podman and this runtime get along (crun 0.17 refuses
    // podman 5's config with `unknown version specified`).
    let probe = guest.user(&format!("podman run --rm --network=none --pull=never --runtime {podman_arg} --entrypoint /echo-probe {image} --version"), t)?;
    if !probe.success() {
        let output = probe.combined();
        let err = output
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .trim()
            .to_string();
        if let Some(reason) = incompatibility(&output) {
            let why = format!(
                "{spec} {version} cannot run a container with this podman: {reason}: {err}"
            );
            return Ok(Err(Unusable(why, Some(version))));
        }
        bail!(
            "{spec} {version} ({podman_arg}) failed to run a trivial container, for no known incompatibility:\n{}",
            output.trim()
        );
    }
    Ok(Ok(Installed {
        podman_arg,
        version,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("runc version 1.1.15+ds1\ncommit: v1.1.15\nspec: 1.2.0", "1.1.15+ds1")]
    #[case("crun version 1.21\ncommit: abc\n", "1.21")]
    #[case("runc version 1.0.0~rc93+ds1\n", "1.0.0~rc93+ds1")]
    fn versions(#[case] out: &str, #[case] v: &str) {
        assert_eq!(parse_version(out).unwrap(), v);
    }

    #[rstest]
    #[case("Error: OCI runtime error: crun: unknown version specified", true)]
    #[case(
        "Error: crun: error while loading shared libraries: libyajl.so.2",
        false
    )]
    #[case(
        "bash: /opt/socket-activation-lab/runtimes/runc@sid/runc: No such file",
        false
    )]
    fn only_listed_errors_are_incompatibilities(#[case] output: &str, #[case] listed: bool) {
        assert_eq!(incompatibility(output).is_some(), listed);
    }
}
