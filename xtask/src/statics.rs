//! Static builds of socket-activate-echo and echo-probe: what goes into a `FROM scratch`
//! image and into a guest, whatever libc the guest has.

use std::path::{Path, PathBuf};

use vm::ready::Binaries;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

const MUSL: &str = "x86_64-unknown-linux-musl";
const GNU: &str = "x86_64-unknown-linux-gnu";

fn musl_available(sh: &Shell) -> bool {
    let installed = cmd!(sh, "rustup target list --installed")
        .quiet()
        .ignore_stderr()
        .read();
    if installed.is_ok_and(|list| list.lines().any(|l| l.trim() == MUSL)) {
        return true;
    }
    eprintln!("xtask: adding the {MUSL} target with rustup");
    cmd!(sh, "rustup target add {MUSL}").quiet().run().is_ok()
}

/// Builds both binaries statically linked (musl, or glibc with `+crt-static` when the musl
/// target cannot be installed), in release mode, and checks they really are static.
pub fn build(sh: &Shell, root: &Path) -> Result<Binaries> {
    let target = if musl_available(sh) { MUSL } else { GNU };
    let mut build = cmd!(
        sh,
        "cargo build --release --locked --target {target} -p socket-activate-echo -p echo-probe"
    );
    if target == GNU {
        eprintln!("xtask: {MUSL} unavailable; building with glibc +crt-static");
        build = build.env("RUSTFLAGS", "-C target-feature=+crt-static");
    }
    build.run().context("static build")?;
    let dir = target_dir(sh, root)?.join(target).join("release");
    let bins = Binaries {
        echo: dir.join("socket-activate-echo"),
        probe: dir.join("echo-probe"),
    };
    for bin in [&bins.echo, &bins.probe] {
        ensure_static(bin)?;
    }
    eprintln!(
        "static ({target}): {} {}",
        bins.echo.display(),
        bins.probe.display()
    );
    Ok(bins)
}

/// The echo server with the `mutants` feature (a deliberately broken build for the
/// mutation score), in a target directory of its own so it never replaces the real one.
pub fn build_mutant_echo(sh: &Shell, root: &Path) -> Result<PathBuf> {
    let target = if musl_available(sh) { MUSL } else { GNU };
    let dir = target_dir(sh, root)?.join("mutants");
    let mut build = cmd!(
        sh,
        "cargo build --release --locked --target {target} -p socket-activate-echo --features mutants --target-dir {dir}"
    );
    if target == GNU {
        build = build.env("RUSTFLAGS", "-C target-feature=+crt-static");
    }
    build
        .run()
        .context("static build of the mutant echo server")?;
    let bin = dir.join(target).join("release/socket-activate-echo");
    ensure_static(&bin)?;
    eprintln!("mutant echo server ({target}): {}", bin.display());
    Ok(bin)
}

/// The echo server's host tests (`crates/echo/tests/echo.rs`) and the server they start,
/// both static, for a guest that has what the host lacks (vsock loopback): the test
/// binary finds the server at the path it was compiled with, so both go there.
pub fn build_echo_tests(sh: &Shell) -> Result<(PathBuf, PathBuf)> {
    let target = if musl_available(sh) { MUSL } else { GNU };
    let mut build = cmd!(
        sh,
        "cargo test --no-run --locked --target {target} -p socket-activate-echo --test echo --message-format=json-render-diagnostics"
    );
    if target == GNU {
        build = build.env("RUSTFLAGS", "-C target-feature=+crt-static");
    }
    let messages = build.read().context("static build of the echo tests")?;
    let artifact = |kind: &str, name: &str| {
        messages
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| {
                m["reason"] == "compiler-artifact"
                    && m["target"]["name"] == name
                    && m["target"]["kind"][0] == kind
            })
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .with_context(|| format!("cargo built no {kind} {name}"))
    };
    let (tests, server) = (
        artifact("test", "echo")?,
        artifact("bin", "socket-activate-echo")?,
    );
    for bin in [&tests, &server] {
        ensure_static(bin)?;
    }
    Ok((tests, server))
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR`, `build.target-dir` or
/// `./target`, as cargo itself resolves them.
pub fn target_dir(sh: &Shell, root: &Path) -> Result<PathBuf> {
    let manifest = root.join("Cargo.toml");
    let out = cmd!(
        sh,
        "cargo metadata --format-version 1 --no-deps --locked --manifest-path {manifest}"
    )
    .quiet()
    .read()
    .context("cargo metadata")?;
    let meta: serde_json::Value = serde_json::from_str(&out).context("cargo metadata's JSON")?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata gave no target_directory")
}

/// An ELF file with no program interpreter needs no dynamic loader and no shared libc.
pub fn ensure_static(path: &Path) -> Result<()> {
    use object::Endianness;
    use object::elf::{FileHeader64, PT_INTERP};
    use object::read::elf::{FileHeader, ProgramHeader};
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let header = FileHeader64::<Endianness>::parse(&*data)
        .with_context(|| format!("{} is not a 64-bit ELF file", path.display()))?;
    let endian = header.endian()?;
    let dynamic = header
        .program_headers(endian, &*data)?
        .iter()
        .any(|ph| ph.p_type(endian) == PT_INTERP);
    if dynamic {
        bail!(
            "{} is dynamically linked (it has an ELF interpreter)",
            path.display()
        );
    }
    Ok(())
}
