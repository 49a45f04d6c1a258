//! What is checked when a scenario loads: numbers, addresses, placeholders, step
//! numbers, known bugs, and that its units render, so that a mistake is a load error
//! naming the file and key, never a trial that fails (or passes) for it.

use std::path::Path;

use anyhow::{Result, bail};

use crate::scenario::schema::{ExpectedOutcome, Scenario, Scope, SourceAddress, Step};
use crate::version;

/// The placeholders a `run` command or a probe address may hold.
pub const PLACEHOLDERS: [&str; 4] = ["{runtime}", "{image}", "{uid}", "{home}"];

/// `text` with every known placeholder filled with a sample value, or the first unknown
/// one: a `{word}` of letters and underscores that is not a shell `${word}` (and so not
/// `{print $1}` in awk either).
fn with_sample_placeholders(text: &str) -> Result<String, String> {
    let filled = text
        .replace("{runtime}", "crun")
        .replace("{image}", "localhost/image:latest")
        .replace("{uid}", "1000")
        .replace("{home}", "/home/test");
    let bytes = filled.as_bytes();
    for (i, _) in filled.match_indices('{') {
        let word: String = filled[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let closed = filled[i + 1 + word.len()..].starts_with('}');
        let shell = i > 0 && bytes[i - 1] == b'$';
        // `{{println}}` in a Go template (podman --format) is podman's, not ours.
        let template = i > 0 && bytes[i - 1] == b'{';
        if !word.is_empty() && closed && !shell && !template {
            return Err(format!(
                "unknown placeholder {{{word}}} (known: {})",
                PLACEHOLDERS.join(", ")
            ));
        }
    }
    Ok(filled)
}

fn check_seconds(key: &str, value: f64, zero_ok: bool) -> Result<(), String> {
    if !value.is_finite() || value < 0.0 || (value == 0.0 && !zero_ok) {
        return Err(format!(
            "{key} = {value}: expected a {} number of seconds",
            if zero_ok { "non-negative" } else { "positive" }
        ));
    }
    Ok(())
}

impl Step {
    /// Checks numbers, addresses and placeholders, so a mistake is a load error that
    /// names the key, never a trial that fails (or passes) for it.
    pub(super) fn validate(&self) -> Result<(), String> {
        match self {
            Step::Probe {
                address,
                timeout,
                fail,
                retry,
                source,
                peer,
                expect,
                half_close,
                ..
            } => {
                check_seconds("timeout", *timeout, false)?;
                if !half_close && expect.is_none() {
                    return Err(
                        "half_close = false needs `expect`: the reply ends when it matches".into(),
                    );
                }
                let filled = with_sample_placeholders(address)?;
                filled
                    .parse::<echo_probe::Address>()
                    .map_err(|e| format!("address: {e}"))?;
                if fail.is_some() && (*retry || source.is_some()) {
                    return Err("a probe that must fail takes neither `retry` nor `source`".into());
                }
                match (source, peer) {
                    (Some(SourceAddress::Rewritten), None) => {
                        return Err("source = \"rewritten\" needs `peer`, the IP address the server must see (any other reply, an echo of the text included, is no proof)".into());
                    }
                    (Some(SourceAddress::Rewritten), Some(ip)) => {
                        ip.parse::<std::net::IpAddr>()
                            .map_err(|e| format!("peer = {ip:?}: {e}"))?;
                    }
                    (_, Some(_)) => return Err("`peer` goes with source = \"rewritten\"".into()),
                    _ => {}
                }
            }
            Step::Run {
                command,
                timeout,
                record,
                ..
            } => {
                if let Some(t) = timeout {
                    check_seconds("timeout", *t, false)?;
                }
                if let Some(name) = record
                    && (name.trim().is_empty() || name.contains(['\t', '\n']))
                {
                    return Err(format!(
                        "record = {name:?}: expected a name (no tab, no line break)"
                    ));
                }
                with_sample_placeholders(command)?;
            }
            Step::Sleep { seconds } => check_seconds("seconds", *seconds, true)?,
            Step::Netinfo {
                outbound,
                outbound_ok,
                outbound_error,
                ..
            } => {
                if outbound_ok.is_some() && outbound.is_none() {
                    return Err("`outbound_ok` needs `outbound`, the address to connect to".into());
                }
                match (outbound_ok, outbound_error) {
                    (Some(false), None) => {
                        return Err("outbound_ok = false needs `outbound_error`, the text of the connect error that proves why (e.g. \"Network unreachable (os error 101)\")".into());
                    }
                    (Some(true) | None, Some(_)) => {
                        return Err("`outbound_error` goes with outbound_ok = false".into());
                    }
                    _ => {}
                }
            }
            Step::IsFailed {
                failed,
                within: Some(w),
                ..
            } => {
                if !failed {
                    return Err(
                        "`within` waits for an active unit to fail: it goes with `failed = true`"
                            .into(),
                    );
                }
                if !(w.is_finite() && *w > 0.0 && *w <= 600.0) {
                    return Err(format!("`within = {w}`: give seconds between 0 and 600"));
                }
            }
            Step::Journal {
                contains: None,
                lacks: None,
                ..
            } => return Err("give `contains`, `lacks` or both".into()),
            Step::Journal {
                contains,
                lacks,
                within: Some(w),
            } => {
                if contains.is_none() || lacks.is_some() {
                    return Err("`within` waits for a text to appear: it goes with `contains` alone (a `lacks` holds only after the whole wait)".into());
                }
                if !(w.is_finite() && *w > 0.0 && *w <= 600.0) {
                    return Err(format!("`within = {w}`: give seconds between 0 and 600"));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The dotted key of the first string under `value` that holds a NUL.
pub(super) fn key_with_nul(value: &toml::Value, key: &str) -> Option<String> {
    match value {
        toml::Value::String(s) => s.contains('\0').then(|| key.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| key_with_nul(v, &format!("{key}[{i}]"))),
        toml::Value::Table(t) => t.iter().find_map(|(k, v)| {
            let key = if key.is_empty() {
                k.clone()
            } else {
                format!("{key}.{k}")
            };
            key_with_nul(v, &key)
        }),
        _ => None,
    }
}

impl Scenario {
    /// The checks every scenario gets when it loads.
    pub(super) fn validate(&self, path: &Path) -> Result<()> {
        let s = self;
        let p = path.display();
        if s.steps.is_empty() {
            bail!("{p}: key `steps` is empty");
        }
        let steps = s.steps.len();
        let check_step = |what: &str, step: usize| -> Result<()> {
            if step == 0 || step > steps {
                bail!(
                    "{p}: {what}step = {step}: the scenario has steps 1 to {steps} (counted in [[steps]] order)"
                );
            }
            Ok(())
        };
        if s.expect.outcome == ExpectedOutcome::Fail {
            let (Some(pattern), Some(step)) = (&s.expect.pattern, s.expect.step) else {
                bail!(
                    "{p}: `expect.outcome = \"fail\"` needs `expect.step`, the step that must fail, and `expect.pattern`, the text that proves why"
                );
            };
            if pattern.trim().is_empty() {
                bail!("{p}: expect.pattern is empty");
            }
            check_step("expect.", step)?;
        } else if s.expect.pattern.is_some() || s.expect.step.is_some() {
            bail!("{p}: expect.pattern and expect.step belong to `outcome = \"fail\"`");
        }
        match (&s.claim, s.expect.outcome) {
            (None, _) if !s.claim_steps.is_empty() => {
                bail!("{p}: claim_steps without a `claim`: the steps judge nothing")
            }
            (Some(_), ExpectedOutcome::Pass) if s.claim_steps.is_empty() => bail!(
                "{p}: a scenario with a `claim` names the steps that judge it: claim_steps = [N, ...], each one that fails when the claim is false"
            ),
            (Some(_), ExpectedOutcome::Fail) if !s.claim_steps.is_empty() => {
                bail!("{p}: claim_steps: an expected failure's claim is judged at expect.step")
            }
            _ => {}
        }
        for &n in &s.claim_steps {
            if n == 0 {
                if s.load_complaints.is_empty() {
                    bail!(
                        "{p}: claim_steps: step 0 (the units' load) judges a claim only with load_complaints"
                    );
                }
                continue;
            }
            check_step("claim_", n)?;
            let step = &s.steps[n - 1];
            let judges = match step {
                Step::Reboot {} | Step::Sleep { .. } => false,
                Step::Run { record, .. } => record.is_none(),
                _ => true,
            };
            if !judges {
                bail!(
                    "{p}: claim_steps = {:?}: step {n} ({}) judges nothing (a reboot, a sleep or a recorded measurement never fails for a claim)",
                    s.claim_steps,
                    step.kind()
                );
            }
        }
        if s.load_complaints.iter().any(|c| c.trim().is_empty()) {
            bail!("{p}: load_complaints: an empty text would match any complaint");
        }
        for image in &s.prepare.images {
            let known = vm::container_image::known();
            if !known.contains(&image.as_str()) {
                bail!(
                    "{p}: prepare.images: unknown image {image:?} (the lab builds: {})",
                    known.join(", ")
                );
            }
        }
        if s.service.is_some() && s.quadlet.is_some() {
            bail!("{p}: give either [service] or [quadlet], not both");
        }
        if s.quadlet.is_some() && s.scope == Scope::System {
            bail!("{p}: quadlet scenarios run in the user scope");
        }
        for (tool, range) in [
            ("podman", &s.requires.podman),
            ("systemd", &s.requires.systemd),
        ] {
            if let Some(range) = range {
                version::check_range(range)
                    .map_err(|e| anyhow::anyhow!("{p}: requires.{tool} = {range:?}: {e}"))?;
            }
        }
        for (i, step) in s.steps.iter().enumerate() {
            step.validate()
                .map_err(|e| anyhow::anyhow!("{p}: step {} ({}): {e}", i + 1, step.kind()))?;
        }
        for b in &s.known_bug {
            version::check_range(&b.versions).map_err(|e| {
                anyhow::anyhow!(
                    "{p}: known_bug {}: versions = {:?}: {e}",
                    b.issue,
                    b.versions
                )
            })?;
            if let Some(r) = &b.runtime
                && !crate::runtimes::RUNTIMES.contains(&r.as_str())
            {
                bail!(
                    "{p}: known_bug {}: runtime = {r:?}: expected runc or crun",
                    b.issue
                );
            }
            check_step(&format!("known_bug {}: ", b.issue), b.step)?;
            if b.pattern.trim().is_empty() {
                bail!("{p}: known_bug {}: pattern is empty", b.issue);
            }
            if b.runtime.is_some() == b.tool.is_some() {
                bail!(
                    "{p}: known_bug {} needs exactly one of `runtime` and `tool`",
                    b.issue
                );
            }
            if b.decisive
                && !matches!(
                    s.steps.get(b.step - 1),
                    Some(Step::Probe { fail: None, .. })
                )
            {
                bail!(
                    "{p}: known_bug {}: `decisive` ends a probe's wait, and step {} is not a probe that is to answer",
                    b.issue,
                    b.step
                );
            }
        }
        // Render once so a bad unit is a load error, not a trial failure.
        if let Some(u) = s.socket_unit() {
            u.render()
                .map_err(|e| anyhow::anyhow!("{p}: [socket]: {e}"))?;
        }
        Ok(())
    }
}
