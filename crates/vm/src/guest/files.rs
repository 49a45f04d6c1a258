//! Writing files into the guest and copying them out.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Guest;
use super::script::{FILES_WRITTEN, GuestFile, write_files_script};
use crate::proc::{self, Output, quote};

impl Guest {
    /// Writes `content` to `path` in the guest, owned by `owner` (root when `None`),
    /// creating parent directories owned likewise.
    pub fn write_file(
        &self,
        path: &str,
        content: &[u8],
        owner: Option<&str>,
        mode: u32,
    ) -> Result<()> {
        let file = GuestFile {
            path: path.to_string(),
            content: content.to_vec(),
            owner: owner.map(String::from),
            mode,
        };
        self.write_files(&[file], "").map(drop)
    }

    /// Writes several files in one round trip (each as [`Guest::write_file`] would), then
    /// runs `then` (as root) in the same shell: its output (stdout from after the files
    /// were written) and its exit status are returned, not judged; a file that could not
    /// be written is an error. The contents go one after the other through stdin, each
    /// read by `dd` to its exact length, so the commands log shows the paths and sizes,
    /// not the contents.
    pub fn write_files(&self, files: &[GuestFile], then: &str) -> Result<Output> {
        let (writes, stdin) = write_files_script(files);
        let script = format!("{writes}echo '{FILES_WRITTEN}'\nset +e\n{then}");
        let mut out = self.root_stdin(&script, Some(&stdin), Duration::from_secs(120))?;
        let Some(after) = out
            .stdout
            .split_once(&format!("{FILES_WRITTEN}\n"))
            .map(|(_, after)| after.to_string())
        else {
            let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
            bail!(
                "writing {} in the guest failed: {}",
                paths.join(", "),
                out.combined().trim()
            );
        };
        out.stdout = after;
        Ok(out)
    }

    /// Copies a host file into the guest.
    pub fn copy_in(&self, local: &Path, remote: &str, mode: u32) -> Result<()> {
        let data = std::fs::read(local).with_context(|| format!("reading {}", local.display()))?;
        self.write_file(remote, &data, None, mode)
    }

    /// Copies a guest file to the host, byte for byte.
    pub fn copy_out(&self, remote: &str, local: &Path, timeout: Duration) -> Result<()> {
        let shown = format!("cat {}", quote(remote));
        let file = std::fs::File::create(local)
            .with_context(|| format!("creating {}", local.display()))?;
        self.announce("root", &format!("{shown} > (host) {}", local.display()));
        let result = proc::run_to_file(self.ssh_command(&shown, &[]), file, timeout);
        self.record(&result);
        let out = result?;
        if !out.success() {
            let _ = std::fs::remove_file(local);
            bail!(
                "copying {remote} out of the guest failed: {}",
                out.stderr.trim()
            );
        }
        Ok(())
    }
}
