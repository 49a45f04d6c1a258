//! The guest's systemd: its managers, a real reboot, and the journal of units.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::Guest;
use super::script::{Manager, Since, journal_command, unit_journal_command};
use crate::proc::{self, Output};
use crate::target::User;

impl Guest {
    /// The kernel's boot id: changes with every boot.
    pub fn boot_id(&self) -> Result<String> {
        Ok(self
            .root_ok(
                "cat /proc/sys/kernel/random/boot_id",
                Duration::from_secs(30),
            )?
            .stdout
            .trim()
            .to_string())
    }

    /// A real reboot: waits for the old system to go, a new boot (new boot id) to answer
    /// on ssh, and the test user's lingering manager to have started (its sockets listen),
    /// as a user finds the machine who logs in once it has booted. The ssh server alone
    /// says nothing about the user manager: Dropbear answers seconds before it is up.
    pub fn reboot(&self, timeout: Duration, console: &Path) -> Result<()> {
        let before = self.boot_id()?;
        // The connection drops while the command runs: its result says nothing.
        let _ = proc::run(
            self.ssh_command("systemctl reboot", &[]),
            None,
            Duration::from_secs(30),
        );
        self.close_master();
        let deadline = Instant::now() + timeout;
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "the guest did not come back within {} s of `systemctl reboot`; see {}",
                    timeout.as_secs(),
                    console.display()
                );
            }
            self.wait_for_ssh(left, console, &mut || None)?;
            match self.boot_id() {
                Ok(id) if id != before => break,
                _ => self.close_master(),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let out = self.root(&self.user_manager_wait(), left.max(Duration::from_secs(1)))?;
        if !out.success() {
            bail!(
                "after the reboot, the test user's manager did not start: {}",
                out.combined().trim()
            );
        }
        Ok(())
    }

    /// Shell that waits while the test user lingers and its manager (user@UID.service) is
    /// neither active nor failed: an active user manager has reached its sockets.
    fn user_manager_wait(&self) -> String {
        let User { name, uid } = &self.user;
        format!(
            "u=user@{uid}.service; while [ -e /var/lib/systemd/linger/{name} ]; do \
             s=$(systemctl show -P ActiveState $u); \
             case $s in active) exit 0;; failed) echo \"$u failed\"; exit 1;; esac; \
             sleep 0.2; done"
        )
    }

    /// `systemctl ARGS` (`ARGS` already quoted) in `manager`.
    pub fn systemctl(&self, manager: Manager, args: &str, timeout: Duration) -> Result<Output> {
        self.beside(manager, &format!("{} {args}", manager.systemctl()), timeout)
    }

    /// Runs `script` beside `manager`: as the test user for the user manager, as root
    /// for the system's (logged as such).
    pub fn beside(&self, manager: Manager, script: &str, timeout: Duration) -> Result<Output> {
        match manager {
            Manager::User => self.user(script, timeout),
            Manager::System => self.root(script, timeout),
        }
    }

    /// `script` made to run, from a root shell, beside `manager`: as the test user for
    /// the user manager ([`Guest::as_user`]), as it is for the system's.
    pub fn beside_manager(&self, manager: Manager, script: String) -> String {
        match manager {
            Manager::User => self.as_user(&script),
            Manager::System => script,
        }
    }

    /// The last `lines` journal lines of `units` of `manager` (only those logged after
    /// `after`, when given), or why there are none. A user unit's lines are those
    /// it logged and those the user manager logged about it.
    pub fn unit_journal(
        &self,
        manager: Manager,
        units: &[&str],
        lines: usize,
        after: Option<Since>,
    ) -> String {
        let script = unit_journal_command(manager, units, Some(lines), after);
        self.root(&script, Duration::from_secs(60))
            .map(|o| o.combined())
            .unwrap_or_else(|e| format!("(journal unavailable: {e:#})"))
    }

    /// The last `lines` journal lines logged by the test user's processes (its user
    /// manager included), after `after` when given.
    pub fn user_journal(&self, lines: usize, after: Option<Since>) -> String {
        let script = journal_command(&format!("_UID={}", self.user.uid), Some(lines), after);
        self.root(&script, Duration::from_secs(60))
            .map(|o| o.combined())
            .unwrap_or_else(|e| format!("(journal unavailable: {e:#})"))
    }
}
