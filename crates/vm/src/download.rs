//! Verified downloads over HTTP: a file whose SHA-256 is known before it is fetched
//! (resumed where a previous attempt stopped), small texts such as checksum and release
//! files, and gpgv checks of clear-signed ones. Used by Fedora images and by runtime
//! packages fetched from the Debian archive or a Fedora repository.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cache;
use crate::events::{Event, Events};
use crate::proc;

/// The SHA-256 a Fedora CHECKSUM file gives for `file`. The file lists lines
/// `SHA256 (NAME) = HEX` (BSD style, possibly inside a PGP clear-signed block) or
/// `HEX  NAME` (coreutils style).
pub fn checksum_for(checksum_text: &str, file: &str) -> Result<String> {
    for line in checksum_text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("SHA256 (") {
            if let Some((name, hex)) = rest.split_once(") = ")
                && name == file
            {
                return valid_hex(hex.trim(), file);
            }
        } else if let Some((hex, name)) = line.split_once(char::is_whitespace)
            && name.trim().trim_start_matches('*') == file
            && hex.len() == 64
        {
            return valid_hex(hex, file);
        }
    }
    bail!("the CHECKSUM file has no SHA256 line for {file}")
}

fn valid_hex(hex: &str, file: &str) -> Result<String> {
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        bail!("the CHECKSUM line for {file} has a malformed SHA-256 {hex:?}")
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into()
}

pub fn fetch_text(url: &str) -> Result<String> {
    let mut resp = agent()
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: HTTP {}", resp.status());
    }
    resp.body_mut()
        .read_to_string()
        .with_context(|| format!("reading {url}"))
}

/// Downloads `url` to `dest`, resuming from `dest.part` when a previous attempt left one
/// (HTTP Range; a server that answers 200 instead of 206 gets a fresh download), then
/// checks the SHA-256. On a mismatch nothing is kept and the error names both hashes.
pub fn download_verified(
    url: &str,
    sha256: &str,
    dest: &Path,
    events: &Events,
    label: &str,
) -> Result<()> {
    let part = dest.with_extension("part");
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent().get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let mut resp = req.call().with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let (mut file, mut done) = match status {
        206 => (OpenOptions::new().append(true).open(&part)?, have),
        200 => (File::create(&part)?, 0),
        // The partial file is already whole (or longer than the resource): start over.
        416 => {
            std::fs::remove_file(&part)?;
            return download_verified(url, sha256, dest, events, label);
        }
        s => bail!("GET {url}: HTTP {s}"),
    };
    if done > 0 {
        events.emit(Event::Note {
            target: label.into(),
            text: format!("resuming download at {done} bytes"),
        });
    }
    let total = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| n + done);
    let step = events.step(label, &format!("downloading {url}"));
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut next_report = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])?;
        done += n as u64;
        // Progress only for downloads worth watching.
        if let Some(t) = total.filter(|t| *t > 8 << 20) {
            let pct = done * 100 / t.max(1);
            if pct >= next_report {
                events.emit(Event::Note {
                    target: label.into(),
                    text: format!("download {pct}% ({} of {} MiB)", done >> 20, t >> 20),
                });
                next_report = pct + 10;
            }
        }
    }
    file.sync_all()?;
    drop(file);
    step.done();
    if let Some(t) = total
        && done != t
    {
        bail!("download of {url} ended at {done} of {t} bytes; run again to resume");
    }
    let actual = cache::sha256_file(&part)?;
    if actual != sha256 {
        std::fs::remove_file(&part)?;
        bail!(
            "SHA-256 mismatch for {url}: the CHECKSUM file says {sha256}, the download is {actual}; the file was deleted"
        );
    }
    std::fs::rename(&part, dest)?;
    Ok(())
}

/// Checks the clear-signed `text` (a CHECKSUM file, an InRelease) with gpgv against
/// `keyring`; the error names the key file and says what gpgv said.
pub fn verify_clearsigned(text: &str, keyring: &Path) -> Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), text)?;
    let mut c = Command::new("gpgv");
    c.arg("--keyring").arg(keyring).arg(file.path());
    let out = proc::run(c, None, Duration::from_secs(60))?;
    if !out.success() {
        bail!(
            "the signature does not verify with {}:\n{}",
            keyring.display(),
            out.combined().trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const HEX: &str = "2f1ec5a1ed7dcb2bd76a5ff5a0e8ab3a0fd9a10b2de8c7e0a1b5fba8d0f3c1e2";

    #[rstest]
    #[case::bsd(format!("# Fedora-Cloud-44\nSHA256 (Fedora-Cloud-Base-Generic-44-1.6.x86_64.qcow2) = {HEX}\nSHA256 (other.raw.xz) = {}\n", "0".repeat(64)))]
    #[case::signed(format!("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSHA256 (Fedora-Cloud-Base-Generic-44-1.6.x86_64.qcow2) = {HEX}\n-----BEGIN PGP SIGNATURE-----\n"))]
    #[case::coreutils(format!("{HEX}  Fedora-Cloud-Base-Generic-44-1.6.x86_64.qcow2\n"))]
    fn finds_the_image_checksum(#[case] text: String) {
        assert_eq!(
            checksum_for(&text, "Fedora-Cloud-Base-Generic-44-1.6.x86_64.qcow2").unwrap(),
            HEX
        );
    }

    #[test]
    fn missing_or_malformed_checksum() {
        let e = checksum_for("SHA256 (a) = 00\n", "b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no SHA256 line for b"), "{e}");
        let e = checksum_for("SHA256 (a) = xyz\n", "a")
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed SHA-256 \"xyz\""), "{e}");
    }
}
