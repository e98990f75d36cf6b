//! One load run: optionally start the daemon, stream or send batches from
//! N concurrent workers at full speed or a fixed rate, and report what was
//! acknowledged, how fast, with what latency, and what it cost the daemon.

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use prost::bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::{
    data::{Batches, Schedule, Shape},
    procfs, wire,
};

/// How batches travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Client-streaming `Ingest` calls of `--stream-batches` batches each;
    /// one acknowledgement (the summary) per call.
    Stream,
    /// One `IngestBatch` call per batch; one acknowledgement per batch.
    Unary,
}

/// Everything a run needs, from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The daemon's gRPC address, `http://host:port`.
    pub addr: String,
    /// Stream or unary.
    pub mode: Mode,
    /// Concurrent workers, each on its own connection.
    pub streams: usize,
    /// Batches per `Ingest` call in stream mode.
    pub stream_batches: u64,
    /// Total target rate in records per second; `None`: full speed.
    pub rate: Option<f64>,
    /// Load before measuring starts (not counted).
    pub warmup: Duration,
    /// Measured load.
    pub duration: Duration,
    /// Interval of the progress lines on standard error.
    pub report_every: Duration,
    /// The batches.
    pub shape: Shape,
    /// When to send drifted batches.
    pub drift: Schedule,
    /// Pid whose CPU time and memory are reported.
    pub daemon_pid: Option<u32>,
    /// URL that answers 200 once the daemon is ready; without it, readiness
    /// is a successful gRPC connection.
    pub ready_url: Option<String>,
    /// Longest wait for readiness.
    pub ready_timeout: Duration,
    /// A daemon to start before the run and stop after it.
    pub command: Vec<String>,
    /// Free text carried into the report.
    pub label: String,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Acknowledgements measured.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    fn of(mut micros: Vec<u32>) -> Self {
        if micros.is_empty() {
            return Self::default();
        }
        micros.sort_unstable();
        let at = |q: f64| {
            let i = ((q * micros.len() as f64).ceil() as usize).clamp(1, micros.len()) - 1;
            f64::from(micros[i]) / 1000.0
        };
        let sum: u64 = micros.iter().map(|&m| u64::from(m)).sum();
        Self {
            count: micros.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
            mean_ms: sum as f64 / micros.len() as f64 / 1000.0,
        }
    }
}

/// What the daemon's process cost during the measured interval.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DaemonCost {
    /// Its pid.
    pub pid: u32,
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    /// CPU seconds per second of measurement (1.0 = one core busy).
    pub cpu_cores: f64,
    /// Resident memory at the end, MiB.
    pub rss_mib_end: f64,
    /// Smallest resident memory seen (sampled every second), MiB.
    pub rss_mib_min: f64,
    /// Largest resident memory seen, MiB.
    pub rss_mib_max: f64,
    /// Resident memory at the start of the measurement, MiB.
    pub rss_mib_start: f64,
    /// The process's high-water mark of resident memory (`VmHWM`) at the
    /// end, MiB: the whole run, start-up and warm-up included.
    pub rss_mib_peak: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `--label`.
    pub label: String,
    /// Stream or unary.
    pub mode: Mode,
    /// Workers.
    pub streams: usize,
    /// Rows per batch.
    pub rows: usize,
    /// Numeric features.
    pub features: usize,
    /// Categorical features.
    pub categorical: usize,
    /// Models.
    pub models: usize,
    /// Target rate (records/s), when paced.
    pub target_records_per_s: Option<f64>,
    /// Measured seconds.
    pub seconds: f64,
    /// Batches acknowledged.
    pub batches: u64,
    /// Records acknowledged.
    pub records: u64,
    /// Records acknowledged per second.
    pub records_per_s: f64,
    /// Feature values acknowledged per second.
    pub values_per_s: f64,
    /// Encoded megabytes acknowledged per second.
    pub mb_per_s: f64,
    /// Acknowledgement latency.
    pub latency: Latency,
    /// Failed calls by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// The daemon's cost, when its pid is known.
    pub daemon: Option<DaemonCost>,
    /// CPU seconds of the load generator itself.
    pub loadgen_cpu_seconds: Option<f64>,
    /// Milliseconds from starting the daemon to ready, when it was started
    /// here.
    pub ready_ms: Option<f64>,
    /// Milliseconds from SIGTERM to its exit, when it was started here.
    pub stop_ms: Option<f64>,
}

/// Counters the workers share.
#[derive(Default)]
struct Counters {
    measuring: AtomicBool,
    stop: AtomicBool,
    batches: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn error(&self, status: &tonic::Status) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *e.entry(format!("{:?}", status.code())).or_insert(0) += 1;
    }

    fn error_total(&self) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

/// Runs the load and returns the report.
///
/// # Errors
/// The daemon could not be started or did not become ready, or no
/// connection could be made.
pub async fn run(s: Settings) -> anyhow::Result<Report> {
    let batches = Arc::new(Batches::generate(&s.shape, s.drift.any()));
    let batch_bytes = batches.encoded_len() as u64;
    let mut child = None;
    let mut ready_ms = None;
    if let Some((program, args)) = s.command.split_first() {
        let started = Instant::now();
        let c = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        child = Some(c);
        if let Err(e) = wait_ready(&s).await {
            if let Some(c) = child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return Err(e);
        }
        ready_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        eprintln!(
            "driftd-loadgen: {program} ready after {:.0} ms",
            ready_ms.unwrap_or(0.0)
        );
    }
    let pid = s.daemon_pid.or(child.as_ref().map(Child::id));
    let outcome = load(&s, batches.clone(), batch_bytes, pid).await;
    let mut stop_ms = None;
    if let Some(c) = child.take() {
        stop_ms = Some(stop(c).await?);
    }
    let mut report = outcome?;
    report.ready_ms = ready_ms;
    report.stop_ms = stop_ms;
    Ok(report)
}

async fn wait_ready(s: &Settings) -> anyhow::Result<()> {
    let deadline = Instant::now() + s.ready_timeout;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    loop {
        let ready = match &s.ready_url {
            Some(url) => http
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            None => Endpoint::from_shared(s.addr.clone())?
                .connect_timeout(Duration::from_secs(1))
                .connect()
                .await
                .is_ok(),
        };
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the daemon was not ready within {:?}", s.ready_timeout);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// SIGTERM, then wait for the exit (SIGKILL after a minute); returns the
/// milliseconds it took.
async fn stop(mut child: Child) -> anyhow::Result<f64> {
    let started = Instant::now();
    // `kill` rather than libc: the crate forbids unsafe code.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                eprintln!("driftd-loadgen: the daemon exited with {status}");
            }
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the daemon did not stop within 60 s of SIGTERM; killed");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(addr.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

async fn load(
    s: &Settings,
    batches: Arc<Batches>,
    batch_bytes: u64,
    pid: Option<u32>,
) -> anyhow::Result<Report> {
    let mut report = Report {
        label: s.label.clone(),
        mode: s.mode,
        streams: s.streams,
        rows: s.shape.rows,
        features: s.shape.features,
        categorical: s.shape.categorical,
        models: s.shape.models,
        target_records_per_s: s.rate,
        seconds: 0.0,
        batches: 0,
        records: 0,
        records_per_s: 0.0,
        values_per_s: 0.0,
        mb_per_s: 0.0,
        latency: Latency::default(),
        errors: BTreeMap::new(),
        daemon: None,
        loadgen_cpu_seconds: None,
        ready_ms: None,
        stop_ms: None,
    };
    if s.duration.is_zero() {
        return Ok(report);
    }
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let mut workers = Vec::with_capacity(s.streams);
    for w in 0..s.streams {
        let channel = connect(&s.addr).await?;
        let worker = Worker {
            id: w,
            settings: s.clone(),
            batches: batches.clone(),
            counters: counters.clone(),
            started,
            batch_bytes,
        };
        workers.push(tokio::spawn(worker.run(channel)));
    }
    tokio::time::sleep(s.warmup).await;
    let pid_text = pid.map(|p| p.to_string());
    let daemon_start = pid_text.as_deref().and_then(procfs::sample);
    let self_start = procfs::sample("self");
    counters.measuring.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    let (mut rss_min, mut rss_max) = (u64::MAX, 0u64);
    let mut last = (t0, 0u64, daemon_start);
    let mut next_report = s.report_every;
    while t0.elapsed() < s.duration {
        let left = s.duration.saturating_sub(t0.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        let now = pid_text.as_deref().and_then(procfs::sample);
        if let Some(p) = now {
            rss_min = rss_min.min(p.rss_bytes);
            rss_max = rss_max.max(p.rss_bytes);
        }
        if t0.elapsed() >= next_report || t0.elapsed() >= s.duration {
            next_report += s.report_every;
            let records = counters.records.load(Ordering::Relaxed);
            let dt = last.0.elapsed().as_secs_f64();
            let rate = (records - last.1) as f64 / dt;
            let cpu = match (last.2, now) {
                (Some(a), Some(b)) => format!(
                    "  daemon cpu {:>5.1}%  rss {:>6.1} MiB",
                    (b.cpu_seconds - a.cpu_seconds) / dt * 100.0,
                    mib(b.rss_bytes)
                ),
                _ => String::new(),
            };
            eprintln!(
                "[{:>6.1}s] {:>10.0} records/s {:>12.0} values/s  errors {}{cpu}",
                t0.elapsed().as_secs_f64(),
                rate,
                rate * (s.shape.features + s.shape.categorical) as f64,
                counters.error_total(),
            );
            last = (Instant::now(), records, now);
        }
    }
    counters.measuring.store(false, Ordering::SeqCst);
    let seconds = t0.elapsed().as_secs_f64();
    let daemon_end = pid_text.as_deref().and_then(procfs::sample);
    let self_end = procfs::sample("self");
    counters.stop.store(true, Ordering::SeqCst);
    let mut micros = Vec::new();
    for w in workers {
        match tokio::time::timeout(Duration::from_secs(60), w).await {
            Ok(Ok(m)) => micros.extend(m),
            Ok(Err(e)) => eprintln!("driftd-loadgen: a worker failed: {e}"),
            Err(_) => eprintln!("driftd-loadgen: a worker did not finish within 60 s"),
        }
    }
    report.seconds = seconds;
    report.batches = counters.batches.load(Ordering::Relaxed);
    report.records = counters.records.load(Ordering::Relaxed);
    report.records_per_s = report.records as f64 / seconds;
    report.values_per_s = report.records_per_s * (s.shape.features + s.shape.categorical) as f64;
    report.mb_per_s = counters.bytes.load(Ordering::Relaxed) as f64 / seconds / 1e6;
    report.latency = Latency::of(micros);
    report.errors = counters
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let (Some(pid), Some(a), Some(b)) = (pid, daemon_start, daemon_end) {
        report.daemon = Some(DaemonCost {
            pid,
            cpu_seconds: b.cpu_seconds - a.cpu_seconds,
            cpu_cores: (b.cpu_seconds - a.cpu_seconds) / seconds,
            rss_mib_end: mib(b.rss_bytes),
            rss_mib_min: mib(rss_min.min(b.rss_bytes)),
            rss_mib_max: mib(rss_max.max(b.rss_bytes)),
            rss_mib_start: mib(a.rss_bytes),
            rss_mib_peak: mib(b.peak_rss_bytes),
        });
    }
    if let (Some(a), Some(b)) = (self_start, self_end) {
        report.loadgen_cpu_seconds = Some(b.cpu_seconds - a.cpu_seconds);
    }
    Ok(report)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One connection's worth of load.
struct Worker {
    id: usize,
    settings: Settings,
    batches: Arc<Batches>,
    counters: Arc<Counters>,
    started: Instant,
    batch_bytes: u64,
}

impl Worker {
    /// The `k`-th batch of this worker: models in turn across workers,
    /// drifted while the schedule says so.
    fn batch(&self, k: u64) -> Bytes {
        let s = &self.settings;
        let n = self.id as u64 + k * s.streams as u64;
        let model = (n % s.shape.models.max(1) as u64) as usize;
        let drift = s.drift.on(self.started.elapsed());
        self.batches.get(model, k, drift)
    }

    /// Seconds between this worker's batches at the target rate.
    fn interval(&self) -> Option<Duration> {
        let s = &self.settings;
        s.rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(s.shape.rows as f64 * s.streams as f64 / r))
    }

    /// Runs until told to stop; returns the latencies it measured, in
    /// microseconds.
    async fn run(self, channel: Channel) -> Vec<u32> {
        let this = Arc::new(self);
        match this.settings.mode {
            Mode::Stream => this.run_stream(channel).await,
            Mode::Unary => this.run_unary(channel).await,
        }
    }

    fn stopped(&self) -> bool {
        self.counters.stop.load(Ordering::Relaxed)
    }

    fn acked(&self, batches: u64, records: u64, latency: Duration, out: &mut Vec<u32>) {
        if self.counters.measuring.load(Ordering::Relaxed) {
            self.counters.batches.fetch_add(batches, Ordering::Relaxed);
            self.counters.records.fetch_add(records, Ordering::Relaxed);
            self.counters
                .bytes
                .fetch_add(batches * self.batch_bytes, Ordering::Relaxed);
            out.push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
        }
    }

    fn failed(&self, status: &tonic::Status) {
        if self.counters.measuring.load(Ordering::Relaxed) {
            self.counters.error(status);
        }
    }

    async fn run_stream(self: Arc<Self>, channel: Channel) -> Vec<u32> {
        let mut out = Vec::new();
        let interval = self.interval();
        let first = Instant::now();
        let mut k = 0u64;
        while !self.stopped() {
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            let per_call = self.settings.stream_batches.max(1);
            let me = self.clone();
            let start_k = k;
            let feeder = tokio::spawn(async move {
                let mut k = start_k;
                for _ in 0..per_call {
                    if me.stopped() {
                        break;
                    }
                    if let Some(iv) = interval {
                        tokio::time::sleep_until((first + iv.mul_f64(k as f64)).into()).await;
                    }
                    if tx.send(me.batch(k)).await.is_err() {
                        break;
                    }
                    k += 1;
                }
                k
            });
            let call_started = Instant::now();
            let res = wire::ingest_stream(
                channel.clone(),
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )
            .await;
            k = feeder.await.unwrap_or(k + per_call);
            match res {
                Ok(summary) => self.acked(
                    summary.batches,
                    summary.records,
                    call_started.elapsed(),
                    &mut out,
                ),
                Err(status) => {
                    self.failed(&status);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        out
    }

    async fn run_unary(self: Arc<Self>, channel: Channel) -> Vec<u32> {
        let mut out = Vec::new();
        let interval = self.interval();
        let mut grpc = tonic::client::Grpc::new(channel);
        let first = Instant::now();
        let mut k = 0u64;
        while !self.stopped() {
            // A call that could not go at its scheduled time because the
            // previous one had not come back counts from that time, so a
            // daemon that falls behind is charged for the wait it causes
            // (no coordinated omission). A call that waited for its time
            // counts from when it went: the timer's lateness (tokio wakes
            // up to a millisecond after the deadline) is this generator's.
            let scheduled = match interval {
                Some(iv) => {
                    let at = first + iv.mul_f64(k as f64);
                    if Instant::now() >= at {
                        at
                    } else {
                        tokio::time::sleep_until(at.into()).await;
                        Instant::now()
                    }
                }
                None => Instant::now(),
            };
            let batch = self.batch(k);
            match wire::ingest_batch(&mut grpc, batch).await {
                Ok(r) => self.acked(1, r.records, scheduled.elapsed(), &mut out),
                Err(status) => {
                    self.failed(&status);
                    if status.code() != tonic::Code::ResourceExhausted {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            k += 1;
        }
        out
    }
}

/// Prints the report for people.
pub fn print(r: &Report) {
    let mode = match r.mode {
        Mode::Stream => "stream",
        Mode::Unary => "unary",
    };
    println!("label            {}", r.label);
    println!(
        "load             {mode}, {} workers, {} rows x {} features ({} categorical), {} models{}",
        r.streams,
        r.rows,
        r.features + r.categorical,
        r.categorical,
        r.models,
        r.target_records_per_s
            .map(|t| format!(", target {t:.0} records/s"))
            .unwrap_or_else(|| ", full speed".into())
    );
    println!(
        "acknowledged     {} batches, {} records in {:.1} s",
        r.batches, r.records, r.seconds
    );
    println!("records/s        {:.0}", r.records_per_s);
    println!(
        "values/s         {:.0}  ({:.1} M)",
        r.values_per_s,
        r.values_per_s / 1e6
    );
    println!("MB/s             {:.1}", r.mb_per_s);
    println!(
        "ack latency      p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  ({} acks)",
        r.latency.p50_ms, r.latency.p99_ms, r.latency.p999_ms, r.latency.max_ms, r.latency.count
    );
    let errors: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "errors           {}",
        if errors.is_empty() {
            "none".to_string()
        } else {
            errors.join(", ")
        }
    );
    if let Some(d) = &r.daemon {
        println!(
            "daemon cpu       {:.2} s ({:.2} cores)  pid {}",
            d.cpu_seconds, d.cpu_cores, d.pid
        );
        println!(
            "daemon rss       start {:.1} MiB  end {:.1} MiB  min {:.1} MiB  max {:.1} MiB  peak {:.1} MiB",
            d.rss_mib_start, d.rss_mib_end, d.rss_mib_min, d.rss_mib_max, d.rss_mib_peak
        );
    }
    if let Some(c) = r.loadgen_cpu_seconds {
        println!("loadgen cpu      {c:.2} s");
    }
    if let Some(ms) = r.ready_ms {
        println!("ready after      {ms:.0} ms");
    }
    if let Some(ms) = r.stop_ms {
        println!("stopped after    {ms:.0} ms");
    }
}
