//! `cargo xtask image`: the echo image as an OCI archive (an OCI image layout in a tar,
//! what `podman load` and `skopeo copy oci-archive:` take): `FROM scratch`, the static
//! socket-activate-echo and echo-probe, `USER 65534:65534`, labels with version and
//! source. Built without a container engine: the layer and the JSON documents are
//! written here and hashed with sha2.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};
use xshell::{Shell, cmd};

use vm::ready::Binaries;

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `data` as a blob; returns its descriptor fields (digest, size).
fn blob(layout: &Path, data: &[u8]) -> Result<(String, usize)> {
    let hex = sha256_hex(data);
    std::fs::write(layout.join("blobs/sha256").join(&hex), data)?;
    Ok((format!("sha256:{hex}"), data.len()))
}

pub fn build(sh: &Shell, root: &Path, bins: &Binaries, tag: &str) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let out_dir = root.join("target/image");
    let work = out_dir.join("layout");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("blobs/sha256"))?;
    let rootfs = out_dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::create_dir_all(&rootfs)?;
    std::fs::copy(&bins.echo, rootfs.join("socket-activate-echo"))?;
    std::fs::copy(&bins.probe, rootfs.join("echo-probe"))?;
    // A reproducible layer: fixed owner and mtime, sorted names, gzip without a name or time.
    let layer_tar = out_dir.join("layer.tar");
    cmd!(sh, "tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --mode=0755 -cf {layer_tar} -C {rootfs} socket-activate-echo echo-probe").run()?;
    let tar_bytes = std::fs::read(&layer_tar)?;
    let diff_id = format!("sha256:{}", sha256_hex(&tar_bytes));
    cmd!(sh, "gzip -n -f {layer_tar}").run()?;
    let gz = std::fs::read(out_dir.join("layer.tar.gz"))?;
    let (layer_digest, layer_size) = blob(&work, &gz)?;

    let labels = json!({
        "org.opencontainers.image.title": "socket-activate-echo",
        "org.opencontainers.image.description": "Echo server for every socket it inherits through socket activation",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.source": env!("CARGO_PKG_REPOSITORY"),
        "org.opencontainers.image.licenses": env!("CARGO_PKG_LICENSE"),
    });
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "User": "65534:65534", "Entrypoint": ["/socket-activate-echo"], "Labels": labels },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": "cargo xtask image", "comment": "static socket-activate-echo and echo-probe" }],
    });
    let (config_digest, config_size) = blob(&work, serde_json::to_string(&config)?.as_bytes())?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size }],
        "annotations": labels,
    });
    let (manifest_digest, manifest_size) =
        blob(&work, serde_json::to_string(&manifest)?.as_bytes())?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    std::fs::write(work.join("index.json"), serde_json::to_string(&index)?)?;
    std::fs::write(work.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let archive = out_dir.join(format!("socket-activate-echo-{version}-amd64.oci.tar"));
    cmd!(sh, "tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf {archive} -C {work} oci-layout index.json blobs")
        .run()
        .context("writing the OCI archive")?;
    let _ = std::fs::remove_dir_all(&rootfs);
    let _ = std::fs::remove_file(out_dir.join("layer.tar.gz"));
    Ok(archive)
}
