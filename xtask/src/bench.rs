//! `cargo xtask bench echo`: socket-activate-echo against reference echo servers on the
//! same loopback, in one run, interleaved, reported as ratios (this machine is shared and
//! noisy, so absolute numbers from different runs are not comparable).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

use crate::host;
use crate::process::Background;
use crate::statics;

pub struct EchoBenchOptions {
    pub seconds: f64,
    pub size: usize,
    pub rounds: usize,
    pub connections: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Sample {
    mib_per_s: f64,
    p99_us: f64,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The simplest correct echo: one blocking thread per connection. The bar to meet.
fn start_blocking_echo() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn echo(sh: &Shell, root: &Path, opts: &EchoBenchOptions) -> Result<()> {
    host::ensure(sh, &[host::SOCKET_ACTIVATE, host::SOCAT])?;
    let bins = statics::build(sh, root)?;
    let (echo_bin, probe_bin) = (&bins.echo, &bins.probe);

    let activated = free_port()?;
    let activated_listen = format!("127.0.0.1:{activated}");
    let mut _servers = vec![Background::spawn(
        "systemd-socket-activate + socket-activate-echo",
        cmd!(
            sh,
            "systemd-socket-activate -l {activated_listen} {echo_bin}"
        ),
    )?];
    let socat = free_port()?;
    let socat_listen = format!("TCP-LISTEN:{socat},bind=127.0.0.1,fork,reuseaddr");
    _servers.push(Background::spawn(
        "socat",
        cmd!(sh, "socat {socat_listen} EXEC:cat"),
    )?);
    let blocking = start_blocking_echo()?;
    let servers = [
        ("socket-activate-echo", activated),
        ("blocking std echo", blocking),
        ("socat fork EXEC:cat", socat),
    ];
    // Wait until every server answers (socat and the activator start asynchronously).
    for (name, port) in servers {
        let addr = format!("tcp4:127.0.0.1:{port}");
        let mut ok = false;
        for _ in 0..100 {
            if cmd!(sh, "{probe_bin} {addr} --expect hello --timeout 2")
                .quiet()
                .ignore_stdout()
                .ignore_stderr()
                .run()
                .is_ok()
            {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::ensure!(ok, "{name} on port {port} never answered");
    }

    let (seconds, size) = (opts.seconds.to_string(), opts.size.to_string());
    let mut table = String::from(
        "| server | connections | MiB/s | p99 µs | throughput ratio vs blocking | p99 ratio vs blocking |\n|---|---|---|---|---|---|\n",
    );
    let mut verdicts = Vec::new();
    let mut rounds: Vec<(String, usize, f64)> = Vec::new();
    for &conns in &opts.connections {
        let conns_text = conns.to_string();
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); servers.len()];
        for round in 0..opts.rounds {
            // Rotate the order each round so no server always runs first (or last).
            for k in 0..servers.len() {
                let i = (k + round) % servers.len();
                let (name, port) = servers[i];
                let addr = format!("tcp4:127.0.0.1:{port}");
                eprintln!(
                    "bench: {name}, {conns} connection(s), round {}/{}",
                    round + 1,
                    opts.rounds
                );
                let out = cmd!(sh, "{probe_bin} bench {addr} --connections {conns_text} --seconds {seconds} --size {size} --json")
                    .quiet()
                    .read()
                    .with_context(|| format!("echo-probe bench against {name}"))?;
                let v: serde_json::Value = serde_json::from_str(&out)?;
                let sample = Sample {
                    mib_per_s: v["mib_per_s"].as_f64().unwrap_or(0.0),
                    p99_us: v["p99_us"].as_f64().unwrap_or(0.0),
                };
                rounds.push((
                    format!("{name}, {conns} connection(s)"),
                    round,
                    sample.mib_per_s,
                ));
                samples[i].push(sample);
            }
        }
        for s in &mut _servers {
            s.check_running()?;
        }
        let summary: Vec<(f64, f64)> = samples
            .iter()
            .map(|s| {
                (
                    median(s.iter().map(|x| x.mib_per_s).collect()),
                    median(s.iter().map(|x| x.p99_us).collect()),
                )
            })
            .collect();
        let (base_tp, base_p99) = summary[1];
        for ((name, _), (tp, p99)) in servers.iter().zip(&summary) {
            table += &format!(
                "| {name} | {conns} | {tp:.1} | {p99:.0} | {:.2} | {:.2} |\n",
                tp / base_tp,
                p99 / base_p99
            );
        }
        verdicts.push((conns, summary[0].0 / base_tp));
    }
    println!(
        "\nEcho over TCP loopback, {size} B round trips, {seconds} s per run, median of {} rounds\n",
        opts.rounds
    );
    println!("{table}");
    for (conns, ratio) in &verdicts {
        println!(
            "socket-activate-echo / blocking std echo throughput at {conns} connection(s): {ratio:.2}x"
        );
    }
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("echo.md"), &table)?;
    // One chart per connection count, each against the blocking std echo at that count.
    let mut bars = Vec::new();
    for &conns in &opts.connections {
        let suffix = format!(", {conns} connection(s)");
        let these: Vec<(String, usize, f64)> = rounds
            .iter()
            .filter(|(n, _, _)| n.ends_with(&suffix))
            .cloned()
            .collect();
        bars.extend(lab::report::html::ratio_bars(
            &these,
            &format!("{}{suffix}", servers[1].0),
        ));
    }
    std::fs::write(
        out_dir.join("echo.html"),
        lab::report::html::chart_page(
            "bench echo: throughput vs a blocking std echo",
            &format!(
                "TCP loopback, {size} B round trips, {seconds} s per run, {} rounds",
                opts.rounds
            ),
            &bars,
            &table,
        ),
    )?;
    println!(
        "\ntable written to {} and {}",
        out_dir.join("echo.md").display(),
        out_dir.join("echo.html").display()
    );
    Ok(())
}

/// `cargo xtask bench methods`: the inbound networking methods in one guest (see
/// `lab::netbench`). Writes `summary.md` and `samples.json` beside the guest's logs.
pub fn methods(
    sh: &Shell,
    root: &Path,
    target: &str,
    runtime: &str,
    opts: &lab::netbench::Options,
) -> Result<()> {
    host::ensure(sh, host::LAB)?;
    let target = vm::target::find(&root.join("vm"), target)?;
    let spec: lab::runtimes::RuntimeSpec = runtime.parse()?;
    if let Some(why) = spec.refusal(&target) {
        anyhow::bail!("{why}");
    }
    if spec.origin != lab::runtimes::Origin::Target {
        anyhow::bail!("bench methods runs the target's own runtime (runc or crun), not {spec}");
    }
    vm::cleanup::install_handler();
    let bins = statics::build(sh, root)?;
    let events = crate::lab::events();
    let ready = vm::ready::ensure_ready(&target, &bins, events.machine())?;
    let dir = lab::run::new_run_dir(root)?.join("bench-methods");
    let vm = vm::trial_vm::TrialVm::start(&ready, &dir, events.machine())?;
    let results = lab::netbench::run(&vm, runtime, opts, &events)
        .with_context(|| format!("the benchmark failed; logs in {}", dir.display()))?;
    drop(vm);
    let version = |k: &str| ready.versions.get(k).cloned().unwrap_or_else(|| "?".into());
    let context = format!(
        "{} under {}, {runtime} {}, podman {}",
        target.name,
        ready.machine.accel.name(),
        version(runtime),
        version("podman")
    );
    let table = lab::netbench::table(&results, opts, &context);
    std::fs::write(dir.join("summary.md"), &table)?;
    std::fs::write(
        dir.join("report.html"),
        lab::report::html::chart_page(
            "bench methods: throughput vs directly on the guest",
            &context,
            &lab::netbench::bars(&results),
            &table,
        ),
    )?;
    std::fs::write(
        dir.join("samples.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    println!(
        "\n{table}\n(written to {} and {})",
        dir.join("summary.md").display(),
        dir.join("report.html").display()
    );
    let check = lab::netbench::aa_check(&results);
    if !check.problems.is_empty() {
        anyhow::bail!(
            "the A/A check failed, so these ratios do not hold: {}",
            check.problems.join("; ")
        );
    }
    Ok(())
}
