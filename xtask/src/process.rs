//! Background processes owned by a guard: killed and reaped when the guard drops, also on
//! an error path or a panic.

use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

pub struct Background {
    name: String,
    child: Option<Child>,
}

impl Background {
    /// Starts an xshell command in the background (xshell itself only runs to completion).
    pub fn spawn(name: &str, cmd: xshell::Cmd<'_>) -> Result<Background> {
        let mut command = Command::from(cmd);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Background {
            name: name.to_string(),
            child: Some(child),
        })
    }

    /// Fails if the process already exited (it should still be serving).
    pub fn check_running(&mut self) -> Result<()> {
        let child = self.child.as_mut().expect("child present until drop");
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("{} exited early: {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
