//! `echo-probe bench`: N connections, each doing send-then-receive round trips of a fixed
//! size for a fixed time. Reports echoed throughput and round-trip latency percentiles.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::address::{Address, Exchange};
use crate::conn::Client;

#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub address: Address,
    pub connections: usize,
    pub duration: Duration,
    pub size: usize,
    /// Limit for one round trip; a slower one ends that connection with an error.
    pub timeout: Duration,
}

/// Limit for each connection's first, unmeasured round trip: behind `Accept=yes` it waits
/// for the connection's own container to start (seconds under TCG).
pub const FIRST_REPLY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub address: String,
    pub connections: usize,
    pub size: usize,
    pub seconds: f64,
    pub round_trips: u64,
    /// Payload bytes echoed back (one direction).
    pub bytes: u64,
    pub mib_per_s: f64,
    pub round_trips_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// The slowest first round trip of a connection (not measured above): what a new
    /// connection waits before it is served.
    pub first_reply_ms: f64,
    pub errors: Vec<String>,
}

struct Worker {
    latencies_ns: Vec<u64>,
    error: Option<String>,
}

pub fn bench(spec: &BenchSpec) -> Result<BenchResult, String> {
    if spec.connections == 0 || spec.size == 0 {
        return Err("--connections and --size must be at least 1".into());
    }
    let payload: Arc<Vec<u8>> = Arc::new((0..spec.size).map(|i| (i % 251) as u8).collect());
    // Connect everyone first so connection setup is not measured.
    let connect_deadline = Instant::now() + spec.timeout;
    let clients = (0..spec.connections)
        .map(|_| Client::connect(&spec.address, connect_deadline))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("connecting to {}: {e}", spec.address))?;
    // Each connection makes one round trip before the clock starts (all at once, as a
    // server that starts per connection, Accept=yes, serves them), so what is measured
    // is the served connection, not the server's start. A connection whose first round
    // trip fails still reaches the barrier and reports the error.
    let barrier = Arc::new(Barrier::new(spec.connections + 1));
    let handles: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let (barrier, payload, spec) = (barrier.clone(), payload.clone(), spec.clone());
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut buf = vec![0u8; payload.len().max(64 * 1024)];
                let first = round_trip(&client, &payload, &mut buf, t0 + FIRST_REPLY_TIMEOUT)
                    .map(|()| t0.elapsed().as_secs_f64() * 1000.0)
                    .map_err(|e| format!("the first round trip: {e}"));
                barrier.wait();
                match first {
                    Ok(ms) => (ms, run_worker(&client, &payload, &spec)),
                    Err(e) => (
                        0.0,
                        Worker {
                            latencies_ns: Vec::new(),
                            error: Some(e),
                        },
                    ),
                }
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let (firsts, workers): (Vec<f64>, Vec<Worker>) = handles
        .into_iter()
        .map(|h| h.join().expect("bench worker panicked"))
        .unzip();
    let first_reply_ms = firsts.into_iter().fold(0.0, f64::max);
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies: Vec<u64> = workers
        .iter()
        .flat_map(|w| w.latencies_ns.iter().copied())
        .collect();
    latencies.sort_unstable();
    let round_trips = latencies.len() as u64;
    let bytes = round_trips * spec.size as u64;
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let idx = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[idx] as f64 / 1000.0
    };
    Ok(BenchResult {
        address: spec.address.to_string(),
        connections: spec.connections,
        size: spec.size,
        seconds,
        round_trips,
        bytes,
        mib_per_s: bytes as f64 / seconds / (1024.0 * 1024.0),
        round_trips_per_s: round_trips as f64 / seconds,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: latencies.last().map_or(0.0, |&n| n as f64 / 1000.0),
        first_reply_ms,
        errors: workers.into_iter().filter_map(|w| w.error).collect(),
    })
}

fn run_worker(client: &Client, payload: &[u8], spec: &BenchSpec) -> Worker {
    let end = Instant::now() + spec.duration;
    let mut latencies_ns = Vec::with_capacity(4096);
    let mut buf = vec![0u8; payload.len().max(64 * 1024)];
    let mut error = None;
    while Instant::now() < end {
        let t0 = Instant::now();
        match round_trip(client, payload, &mut buf, t0 + spec.timeout) {
            Ok(()) => latencies_ns.push(t0.elapsed().as_nanos() as u64),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    Worker {
        latencies_ns,
        error,
    }
}

/// Sends `payload` and reads its echo into `buf` (at least `payload.len()` long).
fn round_trip(
    client: &Client,
    payload: &[u8],
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), String> {
    let n = client
        .send(payload, deadline)
        .and_then(|()| match client.exchange() {
            Exchange::Stream => client.recv_exact(&mut buf[..payload.len()], deadline),
            Exchange::Datagram | Exchange::SeqPacket => client.recv(buf, deadline),
        })
        .map_err(|e| e.to_string())?;
    if n == payload.len() && buf[..n] == *payload {
        Ok(())
    } else {
        Err(format!(
            "round trip returned {n} bytes that differ from the {} sent",
            payload.len()
        ))
    }
}

impl BenchResult {
    pub fn summary(&self) -> String {
        format!(
            "{}: {} conn x {} B for {:.1} s: {:.1} MiB/s, {:.0} round trips/s, p50 {:.1} us, p99 {:.1} us{}",
            self.address,
            self.connections,
            self.size,
            self.seconds,
            self.mib_per_s,
            self.round_trips_per_s,
            self.p50_us,
            self.p99_us,
            if self.errors.is_empty() {
                String::new()
            } else {
                format!(", errors: {}", self.errors.join("; "))
            }
        )
    }
}
