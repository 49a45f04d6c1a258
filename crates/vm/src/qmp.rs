//! A minimal QMP client: the commands the lab needs (stop, cont, migrate, query-status,
//! query-migrate, quit), with a timeout on every reply.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (retrying until `timeout`, since QEMU creates the socket as it starts) and
    /// negotiates capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e)
                        .with_context(|| format!("connecting to QMP socket {}", path.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!("unexpected QMP greeting: {greeting}");
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// How long a reply may take from now on.
    pub fn set_timeout(&mut self, timeout: Duration) {
        let _ = self.writer.set_read_timeout(Some(timeout));
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .context("reading from QMP")?;
        if n == 0 {
            bail!("QMP connection closed (QEMU exited?)");
        }
        serde_json::from_str(&line).with_context(|| format!("bad QMP message: {line}"))
    }

    /// Runs one command and returns its `return` value; events in between are skipped.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        writeln!(self.writer, "{msg}").context("writing to QMP")?;
        loop {
            let reply = self.read_message()?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                bail!(
                    "QMP {command}: {}",
                    e.get("desc").and_then(Value::as_str).unwrap_or("error")
                );
            }
            // An asynchronous event: not our reply.
        }
    }

    /// A human monitor command's text answer (for what QMP has no command for).
    pub fn human(&mut self, command_line: &str) -> Result<String> {
        let r = self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": command_line })),
        )?;
        Ok(r.as_str().unwrap_or_default().to_string())
    }

    pub fn status(&mut self) -> Result<String> {
        let r = self.execute("query-status", None)?;
        Ok(r["status"].as_str().unwrap_or("unknown").to_string())
    }

    /// Polls until the VM leaves `inmigrate` (the incoming stream is loaded).
    pub fn wait_incoming(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status()?;
            if status != "inmigrate" {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the incoming migration did not finish within {} s",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Leaves memory backed by a file the guest writes through to out of a saved state
    /// (`x-ignore-shared`), and expects it so in a state to load: set on both sides.
    pub fn ignore_shared_memory(&mut self) -> Result<()> {
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })),
        )
        .map(drop)
    }

    /// Stops the VM and writes its whole state to `uri` (a migration stream, see
    /// `qemu::state_uri`).
    pub fn save_state(&mut self, uri: &str, timeout: Duration) -> Result<()> {
        self.execute("stop", None)?;
        self.execute("migrate", Some(json!({ "uri": uri })))?;
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.execute("query-migrate", None)?;
            match r["status"].as_str() {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    bail!(
                        "saving the VM state failed: {}",
                        r.get("error-desc").cloned().unwrap_or_default()
                    )
                }
                _ if Instant::now() >= deadline => {
                    bail!("saving the VM state took over {} s", timeout.as_secs())
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}
