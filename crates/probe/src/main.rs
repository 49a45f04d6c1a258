//! echo-probe: a socat replacement for tests of socket-activated echo servers.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use echo_probe::{Address, BenchSpec, Expect, ProbeSpec, netinfo};

/// Probe an echo server: send TEXT, wait for the reply until a deadline, compare.
///
/// ADDRESS: tcp4:HOST:PORT, tcp6:[HOST]:PORT, udp4:HOST:PORT, udp6:[HOST]:PORT,
/// unix:PATH, unix-dgram:PATH, unix-seqpacket:PATH (PATH @NAME is abstract), vsock:CID:PORT.
///
/// Exit status: 0 when the expected reply arrived in time, 1 otherwise, 2 on bad usage.
#[derive(Parser, Debug)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    probe: ProbeArgs,
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// Where to connect or send.
    #[arg(required = true)]
    address: Option<String>,
    /// Text to send; a newline is appended, as `echo TEXT | socat` does.
    #[arg(long, default_value = "hello")]
    send: String,
    /// The reply must be this text (plus the newline). Without it any reply passes.
    #[arg(long, conflicts_with = "expect_own_address")]
    expect: Option<String>,
    /// The reply must be this probe's own address (what `socket-activate-echo
    /// --reply-peer` answers when the source address is preserved).
    #[arg(long)]
    expect_own_address: bool,
    /// Send and expect the text without appending a newline.
    #[arg(long)]
    no_newline: bool,
    /// Keep the write side open after sending instead of half-closing it (a proxy that
    /// ends the whole connection on the client's half-close loses the reply otherwise).
    #[arg(long, requires = "expect")]
    keep_open: bool,
    /// Give up after SECS seconds (connect, send and reply together).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Round trips over several connections for a fixed time: throughput and latency.
    Bench {
        address: String,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        #[arg(long, default_value_t = 5.0, value_name = "SECS")]
        seconds: f64,
        /// Bytes per round trip.
        #[arg(long, default_value_t = 1024, value_name = "BYTES")]
        size: usize,
        #[arg(long)]
        json: bool,
    },
    /// Use every fd handed over through LISTEN_FDS (systemd's OpenFile= hands over files
    /// and connected sockets): read each file, echo TEXT over each connected stream
    /// socket. Exit status 0 when every fd worked and every reply was TEXT.
    Inherited {
        #[arg(long, default_value = "hello")]
        send: String,
        #[arg(long, default_value_t = 10.0, value_name = "SECS")]
        timeout: f64,
    },
    /// List interfaces and addresses; with --outbound, say whether a connection succeeds.
    Netinfo {
        /// A stream address to try, e.g. tcp4:10.0.2.2:8080.
        #[arg(long, value_name = "ADDRESS")]
        outbound: Option<String>,
        #[arg(long, default_value_t = 5.0, value_name = "SECS")]
        timeout: f64,
        #[arg(long)]
        json: bool,
    },
}

fn duration(secs: f64, option: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("--{option} {secs}: expected seconds >= 0"))
}

fn parse_address(text: &str) -> Result<Address, String> {
    text.parse::<Address>().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run_probe(cli.probe),
        Some(Command::Bench {
            address,
            connections,
            seconds,
            size,
            json,
        }) => run_bench(&address, connections, seconds, size, json),
        Some(Command::Netinfo {
            outbound,
            timeout,
            json,
        }) => run_netinfo(outbound.as_deref(), timeout, json),
        Some(Command::Inherited { send, timeout }) => run_inherited(&send, timeout),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("echo-probe: {message}");
            ExitCode::from(2)
        }
    }
}

fn run_probe(args: ProbeArgs) -> Result<ExitCode, String> {
    let address = parse_address(args.address.as_deref().unwrap_or_default())?;
    let newline = if args.no_newline { "" } else { "\n" };
    let expect = match (&args.expect, args.expect_own_address) {
        (Some(text), _) => Expect::Bytes(format!("{text}{newline}").into_bytes()),
        (None, true) => Expect::OwnAddress,
        (None, false) => Expect::Anything,
    };
    let spec = ProbeSpec {
        address,
        send: format!("{}{newline}", args.send).into_bytes(),
        expect,
        timeout: duration(args.timeout, "timeout")?,
        keep_open: args.keep_open,
    };
    let result = echo_probe::probe(&spec);
    if args.json {
        println!("{}", serde_json::to_string(&result).expect("serializable"));
    } else {
        if let Some(reply) = &result.reply_bytes {
            use std::io::Write;
            let _ = std::io::stdout().write_all(reply);
        }
        if let Some(e) = &result.error {
            eprintln!(
                "echo-probe: {}: {e} (after {:.0} ms)",
                result.address, result.elapsed_ms
            );
        }
    }
    Ok(if result.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_bench(
    address: &str,
    connections: usize,
    seconds: f64,
    size: usize,
    json: bool,
) -> Result<ExitCode, String> {
    let spec = BenchSpec {
        address: parse_address(address)?,
        connections,
        duration: duration(seconds, "seconds")?,
        size,
        timeout: Duration::from_secs(10),
    };
    let result = echo_probe::bench(&spec)?;
    if json {
        println!("{}", serde_json::to_string(&result).expect("serializable"));
    } else {
        println!("{}", result.summary());
    }
    Ok(if result.errors.is_empty() && result.round_trips > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_inherited(send: &str, timeout: f64) -> Result<ExitCode, String> {
    let report = echo_probe::inherited::inspect(send, duration(timeout, "timeout")?);
    print!("{report}");
    Ok(if report.all_ok(send) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_netinfo(outbound: Option<&str>, timeout: f64, json: bool) -> Result<ExitCode, String> {
    let outbound = match outbound {
        None => None,
        Some(text) => {
            let address = parse_address(text)?;
            if address.exchange() != echo_probe::Exchange::Stream {
                return Err(format!(
                    "--outbound {text}: only stream addresses prove a connection"
                ));
            }
            Some(netinfo::outbound(&address, duration(timeout, "timeout")?))
        }
    };
    let info = netinfo::NetInfo {
        interfaces: netinfo::interfaces()?,
        outbound,
    };
    if json {
        println!("{}", serde_json::to_string(&info).expect("serializable"));
    } else {
        print!("{}", info.render());
    }
    Ok(ExitCode::SUCCESS)
}
