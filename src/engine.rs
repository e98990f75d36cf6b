//! The stateful heart of driftd: owns every model version's window,
//! reference and rule state; writes them to the store; evaluates them on a
//! schedule; updates metrics and hands rule transitions to the webhook
//! sender.
//!
//! Two tasks share the state behind one mutex. The *writer* is the only
//! mutator of windows and the only store writer for ingest: it takes a group
//! of queued commands, applies and writes them, flushes the store once for
//! the whole group (group commit) and only then acknowledges them. The
//! *evaluator* copies windows under the lock, computes statistics on a
//! blocking thread without the lock, then records results and rule
//! transitions. The engine knows tokio but not tonic, HTTP or sled.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::EngineConfig,
    detector::{self, Report},
    domain::{Batch, Kind, ModelKey, Role, Verdict},
    metrics::Metrics,
    reference::{self, Reference},
    rules::{self, Outcome, Tracker, Transition},
    store::{self, Store, StoredBatch, StoredReference},
    webhook,
    window::CountWindow,
};

/// Most commands written under one flush. Bounds the latency of the first
/// command of a group when the queue is deep.
const MAX_GROUP: usize = 256;

/// Why the engine refused a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ingest queue is full; the client should back off and retry.
    #[error("ingest queue is full")]
    QueueFull,
    /// The engine is shutting down.
    #[error("driftd is shutting down")]
    Draining,
    /// A column's kind differs from the kind the feature already has.
    #[error("feature {feature:?} is {expected}, got {got} values")]
    KindMismatch {
        /// Index of the column in the batch.
        column: usize,
        /// Feature name.
        feature: String,
        /// The established kind.
        expected: &'static str,
        /// The kind of the offending column.
        got: &'static str,
    },
    /// The store failed; nothing of the command was acknowledged.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The group commit's flush failed; the command is not durable.
    #[error("store flush failed")]
    Flush,
}

/// What an acknowledged batch contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestAck {
    /// Rows accepted.
    pub records: u64,
    /// Missing values counted.
    pub missing_values: u64,
}

/// What an accepted reference contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferenceAck {
    /// Rows in the new reference.
    pub records: u64,
    /// Features in it.
    pub features: u32,
}

enum Command {
    Ingest {
        batch: Batch,
        enqueued: Instant,
        ack: oneshot::Sender<Result<IngestAck, Error>>,
    },
    SetReference {
        key: ModelKey,
        batches: Vec<Batch>,
        ack: oneshot::Sender<Result<ReferenceAck, Error>>,
    },
}

/// Sends commands to the engine and reads its state. Cheap to clone; the
/// writer stops once every `Handle` is dropped and the queue is empty.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    reader: Reader,
}

/// Read-only access to the engine's state, for status endpoints. Holding
/// one does not keep the writer alive.
#[derive(Clone)]
pub struct Reader {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<BTreeMap<ModelKey, VersionState>>,
    cfg: EngineConfig,
    window_name: String,
}

struct VersionState {
    /// Kind of every feature seen so far, in batches or the reference.
    schema: BTreeMap<String, Kind>,
    records_ingested: u64,
    next_seq: u64,
    /// Batches still in the store, oldest first: (seq, rows).
    retained: VecDeque<(u64, u64)>,
    retained_rows: u64,
    window: CountWindow,
    /// Collects the warm-up reference while there is none.
    warmup: Option<reference::Builder>,
    reference: Option<Arc<Reference>>,
    last_report: Option<Report>,
    last_eval_ms: Option<i64>,
    /// State of every rule, by rule name.
    rules: BTreeMap<String, Tracker>,
    /// Rule outcomes of the last evaluation.
    last_outcomes: Vec<Outcome>,
}

/// The status of one model version, as the status RPC and JSON API show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionStatus {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Records accepted since the version was first seen.
    pub records_ingested: u64,
    /// Rows in the reference; 0 while warming up.
    pub reference_records: u64,
    /// "warmup" or "set_reference"; None without a reference.
    pub reference_source: Option<&'static str>,
    /// Window label.
    pub window: String,
    /// Rows in the window now.
    pub window_records: u64,
    /// Time of the last evaluation, ms since the epoch.
    pub last_evaluation_unix_ms: Option<i64>,
    /// Verdict of the last evaluation.
    pub verdict: Verdict,
    /// Per feature, sorted by name.
    pub features: Vec<FeatureStatus>,
    /// Rule states.
    pub rules: Vec<RuleStatus>,
}

/// One feature's status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureStatus {
    /// Feature name.
    pub name: String,
    /// Input or output.
    pub role: Role,
    /// Numeric or categorical.
    pub kind: Kind,
    /// Non-missing values in the window now.
    pub window_samples: u64,
    /// Missing values in the window now.
    pub window_missing: u64,
    /// Non-missing values in the reference.
    pub reference_samples: u64,
    /// PSI at the last evaluation.
    pub psi: Option<f64>,
    /// KS statistic at the last evaluation.
    pub ks_statistic: Option<f64>,
    /// KS p-value at the last evaluation.
    pub ks_pvalue: Option<f64>,
    /// Chi-square statistic at the last evaluation.
    pub chi2_statistic: Option<f64>,
    /// Chi-square p-value at the last evaluation.
    pub chi2_pvalue: Option<f64>,
    /// Verdict at the last evaluation.
    pub verdict: Verdict,
}

/// One rule's status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleStatus {
    /// Rule name.
    pub name: String,
    /// The rule's statistic.
    pub statistic: &'static str,
    /// Comparison operator.
    pub op: &'static str,
    /// The configured threshold.
    pub threshold: f64,
    /// Severity.
    pub severity: String,
    /// Verdict at the last evaluation.
    pub verdict: Verdict,
    /// inactive, pending or firing.
    pub state: rules::State,
    /// Consecutive evaluations in which the condition held.
    pub consecutive: u32,
    /// Since when it fires, ms since the epoch.
    pub firing_since_unix_ms: Option<i64>,
    /// Features that tripped the rule at the last evaluation.
    pub tripped_features: Vec<String>,
    /// Largest value of the statistic at the last evaluation.
    pub max_value: Option<f64>,
}

/// Restores state from `store` and starts the writer and evaluator tasks on
/// `tracker`. The evaluator stops when `cancel` fires; the writer stops when
/// every [`Handle`] is gone and the queue is drained.
///
/// # Errors
/// Fails when the stored state cannot be read.
// Each argument is a distinct collaborator wired once by `app`; a struct
// would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn start(
    cfg: EngineConfig,
    queue_capacity: usize,
    store: Store,
    loaded: Vec<store::StoredVersion>,
    metrics: Metrics,
    webhooks: webhook::Outbox,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<Handle, store::Error> {
    let window_name = format!("last_{}", cfg.window_size);
    let mut versions = BTreeMap::new();
    for stored in loaded {
        let key = stored.key.clone();
        let v = VersionState::restore(stored, &cfg);
        tracing::info!(model = %key.model, version = %key.version, n_records = v.records_ingested, "Restored model version");
        versions.insert(key, v);
    }
    let shared = Arc::new(Shared {
        state: Mutex::new(versions),
        cfg,
        window_name,
    });
    let (tx, rx) = mpsc::channel(queue_capacity);
    tracker.spawn(run_writer(
        shared.clone(),
        store.clone(),
        metrics.clone(),
        rx,
    ));
    tracker.spawn(run_evaluator(
        shared.clone(),
        store,
        metrics,
        webhooks,
        cancel,
    ));
    Ok(Handle {
        tx,
        reader: Reader { shared },
    })
}

impl Handle {
    /// Queues a batch and waits for its acknowledgement: written to the
    /// store and flushed.
    ///
    /// # Errors
    /// [`Error::QueueFull`] at once when the queue is full; otherwise the
    /// writer's verdict.
    pub async fn ingest(&self, batch: Batch) -> Result<IngestAck, Error> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .try_send(Command::Ingest {
                batch,
                enqueued: Instant::now(),
                ack,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::QueueFull,
                mpsc::error::TrySendError::Closed(_) => Error::Draining,
            })?;
        rx.await.map_err(|_| Error::Draining)?
    }

    /// Like [`Handle::ingest`], but waits for room in the queue instead of
    /// failing: streams apply backpressure through HTTP/2 flow control.
    ///
    /// # Errors
    /// The writer's verdict, or [`Error::Draining`].
    pub async fn ingest_waiting(&self, batch: Batch) -> Result<IngestAck, Error> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Command::Ingest {
                batch,
                enqueued: Instant::now(),
                ack,
            })
            .await
            .map_err(|_| Error::Draining)?;
        rx.await.map_err(|_| Error::Draining)?
    }

    /// Replaces the reference of `key` with the rows of `batches`.
    ///
    /// # Errors
    /// As [`Handle::ingest`].
    pub async fn set_reference(
        &self,
        key: ModelKey,
        batches: Vec<Batch>,
    ) -> Result<ReferenceAck, Error> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Command::SetReference { key, batches, ack })
            .await
            .map_err(|_| Error::Draining)?;
        rx.await.map_err(|_| Error::Draining)?
    }

    /// Read access, for status.
    pub fn reader(&self) -> Reader {
        self.reader.clone()
    }
}

impl Reader {
    /// Status of `model` (all versions, or only `version`); None when the
    /// model is unknown.
    pub fn status(&self, model: &str, version: Option<&str>) -> Option<Vec<VersionStatus>> {
        let state = lock(&self.shared.state);
        let out: Vec<VersionStatus> = state
            .iter()
            .filter(|(k, _)| k.model == model && version.is_none_or(|v| k.version == v))
            .map(|(k, v)| v.status(k, &self.shared.window_name, &self.shared.cfg.rules))
            .collect();
        (!out.is_empty()).then_some(out)
    }
}

/// Locks the state. A panic while holding the lock would leave it poisoned;
/// the state is still consistent at every await-free step, so recover it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// === impl VersionState ===

impl VersionState {
    fn new(cfg: &EngineConfig) -> Self {
        Self {
            schema: BTreeMap::new(),
            records_ingested: 0,
            next_seq: 0,
            retained: VecDeque::new(),
            retained_rows: 0,
            window: CountWindow::new(cfg.window_size),
            warmup: Some(reference::Builder::default()),
            reference: None,
            last_report: None,
            last_eval_ms: None,
            rules: BTreeMap::new(),
            last_outcomes: Vec::new(),
        }
    }

    fn restore(stored: store::StoredVersion, cfg: &EngineConfig) -> Self {
        let mut v = Self::new(cfg);
        if let Some(r) = stored.reference {
            v.set_reference(Reference::compile(
                r.source,
                r.records,
                r.features,
                cfg.psi_bins,
            ));
        }
        v.rules = stored.rules;
        for b in stored.batches {
            v.apply(&b.batch, cfg);
            v.records_ingested = b.cumulative_records;
            v.next_seq = b.seq + 1;
            v.retained.push_back((b.seq, b.batch.n_rows as u64));
            v.retained_rows += b.batch.n_rows as u64;
        }
        v
    }

    fn set_reference(&mut self, r: Reference) {
        for (name, f) in &r.features {
            self.schema.entry(name.clone()).or_insert(f.kind());
        }
        self.reference = Some(Arc::new(r));
        self.warmup = None;
    }

    /// Checks the batch against the established feature kinds.
    fn check(&self, batch: &Batch) -> Result<(), Error> {
        for (i, col) in batch.columns.iter().enumerate() {
            if let Some(&kind) = self.schema.get(&col.name) {
                if kind != col.values.kind() {
                    return Err(Error::KindMismatch {
                        column: i,
                        feature: col.name.clone(),
                        expected: kind.as_str(),
                        got: col.values.kind().as_str(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Applies a checked batch to the window and the warm-up reference.
    fn apply(&mut self, batch: &Batch, cfg: &EngineConfig) {
        for col in &batch.columns {
            self.schema
                .entry(col.name.clone())
                .or_insert(col.values.kind());
        }
        self.window.push(batch);
        if let Some(builder) = self.warmup.as_mut() {
            let need = cfg.warmup_samples.get() as u64 - builder.records();
            builder.push(batch, need as usize);
            if builder.records() >= cfg.warmup_samples.get() as u64 {
                if let Some(b) = self.warmup.take() {
                    self.reference =
                        Some(Arc::new(b.build(reference::Source::Warmup, cfg.psi_bins)));
                }
            }
        }
        self.records_ingested += batch.n_rows as u64;
    }

    fn status(
        &self,
        key: &ModelKey,
        window_name: &str,
        cfg_rules: &[rules::Rule],
    ) -> VersionStatus {
        let counts = self.window.counts();
        let reports: BTreeMap<&str, &detector::FeatureReport> = self
            .last_report
            .iter()
            .flat_map(|r| r.features.iter().map(|f| (f.name.as_str(), f)))
            .collect();
        let snapshot_roles = self.window.roles();
        let names: BTreeSet<&str> = self.schema.keys().map(String::as_str).collect();
        let features = names
            .into_iter()
            .map(|name| {
                let rf = self.reference.as_ref().and_then(|r| r.features.get(name));
                let rep = reports.get(name);
                let (window_samples, window_missing) = counts.get(name).copied().unwrap_or((0, 0));
                FeatureStatus {
                    name: name.to_string(),
                    role: snapshot_roles
                        .get(name)
                        .copied()
                        .or(rf.map(|f| f.role))
                        .unwrap_or(Role::Input),
                    kind: self.schema.get(name).copied().unwrap_or(Kind::Numeric),
                    window_samples,
                    window_missing,
                    reference_samples: rf.map(|f| f.n()).unwrap_or(0),
                    psi: rep.and_then(|r| r.psi),
                    ks_statistic: rep.and_then(|r| r.ks.map(|k| k.statistic)),
                    ks_pvalue: rep.and_then(|r| r.ks.map(|k| k.pvalue)),
                    chi2_statistic: rep.and_then(|r| r.chi2.map(|c| c.statistic)),
                    chi2_pvalue: rep.and_then(|r| r.chi2.map(|c| c.pvalue)),
                    verdict: rep.map(|r| r.verdict).unwrap_or(Verdict::InsufficientData),
                }
            })
            .collect();
        VersionStatus {
            model: key.model.clone(),
            version: key.version.clone(),
            records_ingested: self.records_ingested,
            reference_records: self.reference.as_ref().map(|r| r.records).unwrap_or(0),
            reference_source: self.reference.as_ref().map(|r| r.source.as_str()),
            window: window_name.to_string(),
            window_records: self.window.records(),
            last_evaluation_unix_ms: self.last_eval_ms,
            verdict: combine_verdicts(&self.last_outcomes),
            features,
            rules: cfg_rules
                .iter()
                .filter(|r| r.applies_to(&key.model))
                .map(|r| {
                    let t = self.rules.get(&r.name).copied().unwrap_or_default();
                    let o = self.last_outcomes.iter().find(|o| o.rule == r.name);
                    RuleStatus {
                        name: r.name.clone(),
                        statistic: r.statistic.as_str(),
                        op: r.op.as_str(),
                        threshold: r.threshold,
                        severity: r.severity.clone(),
                        verdict: o.map(|o| o.verdict).unwrap_or(Verdict::InsufficientData),
                        state: t.state(),
                        consecutive: t.consecutive,
                        firing_since_unix_ms: t.firing_since_ms,
                        tripped_features: o
                            .map(|o| o.tripped().map(|v| v.feature.clone()).collect())
                            .unwrap_or_default(),
                        max_value: o
                            .and_then(|o| o.values.iter().map(|v| v.value).reduce(f64::max)),
                    }
                })
                .collect(),
        }
    }
}

// === writer ===

async fn run_writer(
    shared: Arc<Shared>,
    store: Store,
    metrics: Metrics,
    mut rx: mpsc::Receiver<Command>,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        metrics.ingest_queue_depth.set(rx.len() as i64);
        let mut ingest_acks = Vec::new();
        let mut reference_acks = Vec::new();
        {
            let mut state = lock(&shared.state);
            for cmd in group {
                match cmd {
                    Command::Ingest {
                        batch,
                        enqueued,
                        ack,
                    } => match write_batch(&mut state, &shared.cfg, &store, &batch) {
                        Ok(a) => ingest_acks.push((ack, a, enqueued, batch)),
                        Err(e) => {
                            let _ = ack.send(Err(e));
                        }
                    },
                    Command::SetReference { key, batches, ack } => {
                        match write_reference(&mut state, &shared.cfg, &store, key, &batches) {
                            Ok(a) => reference_acks.push((ack, a)),
                            Err(e) => {
                                let _ = ack.send(Err(e));
                            }
                        }
                    }
                }
            }
        }
        if ingest_acks.is_empty() && reference_acks.is_empty() {
            continue;
        }
        // One flush makes every write of the group durable: group commit.
        match store.flush().await {
            Ok(elapsed) => {
                metrics.store_flush_duration.observe(elapsed.as_secs_f64());
                for (ack, a, enqueued, batch) in ingest_acks {
                    count_ingest(&metrics, &batch);
                    metrics
                        .ingest_ack_duration
                        .observe(enqueued.elapsed().as_secs_f64());
                    // A client that went away no longer wants the answer.
                    let _ = ack.send(Ok(a));
                }
                for (ack, a) in reference_acks {
                    let _ = ack.send(Ok(a));
                }
            }
            Err(error) => {
                metrics.store_errors.inc();
                tracing::error!(error = %error, "Store flush failed; batches not acknowledged");
                for (ack, ..) in ingest_acks {
                    let _ = ack.send(Err(Error::Flush));
                }
                for (ack, _) in reference_acks {
                    let _ = ack.send(Err(Error::Flush));
                }
            }
        }
        if let Ok(size) = store.size_on_disk() {
            metrics.store_size.set(size as f64);
        }
    }
    if let Err(error) = store.flush().await {
        tracing::error!(error = %error, "Final store flush failed");
    }
    tracing::info!("Ingest writer stopped");
}

fn count_ingest(metrics: &Metrics, batch: &Batch) {
    let labels = [batch.key.model.as_str(), batch.key.version.as_str()];
    metrics
        .ingest_records
        .with_label_values(&labels)
        .inc_by(batch.n_rows as u64);
    metrics.ingest_batches.with_label_values(&labels).inc();
    for col in &batch.columns {
        let n = col.values.n_missing();
        let c =
            metrics
                .missing_values
                .with_label_values(&[labels[0], labels[1], col.name.as_str()]);
        if n > 0 {
            c.inc_by(n);
        }
    }
}

fn write_batch(
    state: &mut BTreeMap<ModelKey, VersionState>,
    cfg: &EngineConfig,
    store: &Store,
    batch: &Batch,
) -> Result<IngestAck, Error> {
    let v = state
        .entry(batch.key.clone())
        .or_insert_with(|| VersionState::new(cfg));
    v.check(batch)?;
    let seq = v.next_seq;
    let cumulative_records = v.records_ingested + batch.n_rows as u64;
    store.put_batch(&StoredBatch {
        seq,
        cumulative_records,
        batch: batch.clone(),
    })?;
    v.next_seq += 1;
    let had_reference = v.reference.is_some();
    v.apply(batch, cfg);
    if let (false, Some(r)) = (had_reference, v.reference.as_deref()) {
        // The warm-up just completed: persist the reference before the
        // batches it was built from can be deleted below.
        store.put_reference(&batch.key, &stored_reference(r))?;
        tracing::info!(model = %batch.key.model, version = %batch.key.version, n_records = r.records, "Warm-up reference formed");
    }
    v.retained.push_back((seq, batch.n_rows as u64));
    v.retained_rows += batch.n_rows as u64;
    // Batches wholly older than the window are no longer needed once the
    // reference exists (before that, they rebuild the warm-up reference).
    if v.reference.is_some() {
        let mut delete_before = None;
        while let Some(&(seq, rows)) = v.retained.front() {
            if v.retained_rows - rows < cfg.window_size.get() as u64 {
                break;
            }
            v.retained.pop_front();
            v.retained_rows -= rows;
            delete_before = Some(seq + 1);
        }
        if let Some(before) = delete_before {
            store.delete_batches_before(&batch.key, before)?;
        }
    }
    Ok(IngestAck {
        records: batch.n_rows as u64,
        missing_values: batch.n_missing(),
    })
}

fn write_reference(
    state: &mut BTreeMap<ModelKey, VersionState>,
    cfg: &EngineConfig,
    store: &Store,
    key: ModelKey,
    batches: &[Batch],
) -> Result<ReferenceAck, Error> {
    let v = state
        .entry(key.clone())
        .or_insert_with(|| VersionState::new(cfg));
    // The reference must agree with itself; against the live schema it may
    // differ, because a new reference can legitimately change a feature.
    let mut kinds: BTreeMap<&str, Kind> = BTreeMap::new();
    for b in batches {
        for (i, col) in b.columns.iter().enumerate() {
            let k = *kinds.entry(col.name.as_str()).or_insert(col.values.kind());
            if k != col.values.kind() {
                return Err(Error::KindMismatch {
                    column: i,
                    feature: col.name.clone(),
                    expected: k.as_str(),
                    got: col.values.kind().as_str(),
                });
            }
        }
    }
    let mut builder = reference::Builder::default();
    for b in batches {
        builder.push(b, b.n_rows);
    }
    let r = builder.build(reference::Source::SetReference, cfg.psi_bins);
    store.put_reference(&key, &stored_reference(&r))?;
    let ack = ReferenceAck {
        records: r.records,
        features: r.features.len() as u32,
    };
    for (name, f) in &r.features {
        v.schema.insert(name.clone(), f.kind());
    }
    v.set_reference(r);
    tracing::info!(model = %key.model, version = %key.version, n_records = ack.records, "Reference replaced");
    Ok(ack)
}

fn stored_reference(r: &Reference) -> StoredReference {
    StoredReference {
        source: r.source,
        records: r.records,
        features: r
            .features
            .iter()
            .map(|(n, f)| (n.clone(), (f.role, f.raw.clone())))
            .collect(),
    }
}

/// drift if any rule's verdict is drift; ok if any is ok; otherwise
/// insufficient_data.
fn combine_verdicts(outcomes: &[Outcome]) -> Verdict {
    if outcomes.iter().any(|o| o.verdict == Verdict::Drift) {
        Verdict::Drift
    } else if outcomes.iter().any(|o| o.verdict == Verdict::Ok) {
        Verdict::Ok
    } else {
        Verdict::InsufficientData
    }
}

// === evaluator ===

async fn run_evaluator(
    shared: Arc<Shared>,
    store: Store,
    metrics: Metrics,
    webhooks: webhook::Outbox,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(shared.cfg.eval_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; skip it so the first evaluation comes one
    // interval after start, like every later one.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        evaluate_all(&shared, &store, &metrics, &webhooks).await;
    }
    tracing::info!("Evaluator stopped");
}

/// Evaluates every model version once: statistics off the lock, then rules,
/// rule states, metrics and webhook events under it.
async fn evaluate_all(
    shared: &Arc<Shared>,
    store: &Store,
    metrics: &Metrics,
    webhooks: &webhook::Outbox,
) {
    let started = Instant::now();
    let work: Vec<(ModelKey, Option<Arc<Reference>>, CountWindow)> = {
        let state = lock(&shared.state);
        state
            .iter()
            .map(|(k, v)| (k.clone(), v.reference.clone(), v.window.clone()))
            .collect()
    };
    let cfg = shared.cfg.clone();
    let reports = tokio::task::spawn_blocking(move || {
        work.into_iter()
            .map(|(k, r, w)| {
                let mut report = detector::evaluate(r.as_deref(), &w.snapshot(), &cfg);
                let outcomes: Vec<Outcome> = cfg
                    .rules
                    .iter()
                    .filter(|rule| rule.applies_to(&k.model))
                    .map(|rule| rule.evaluate(&report))
                    .collect();
                for f in &mut report.features {
                    let tripped = outcomes
                        .iter()
                        .any(|o| o.tripped().any(|v| v.feature == f.name));
                    f.verdict = if tripped {
                        Verdict::Drift
                    } else if f.sufficient {
                        Verdict::Ok
                    } else {
                        Verdict::InsufficientData
                    };
                }
                (k, report, outcomes)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let reports = match reports {
        Ok(r) => r,
        Err(error) => {
            tracing::error!(error = %error, "Evaluation task failed");
            return;
        }
    };
    let now = now_ms();
    let mut events = Vec::new();
    let mut rules_changed = false;
    {
        let mut state = lock(&shared.state);
        for (key, report, outcomes) in reports {
            let Some(v) = state.get_mut(&key) else {
                continue;
            };
            export(
                metrics,
                &key,
                &shared.window_name,
                &report,
                v.reference.as_deref(),
                shared.cfg.max_features_per_model,
            );
            let verdict = combine_verdicts(&outcomes);
            metrics
                .evaluations
                .with_label_values(&[&key.model, &key.version, verdict.as_str()])
                .inc();
            for (rule, outcome) in shared
                .cfg
                .rules
                .iter()
                .filter(|r| r.applies_to(&key.model))
                .zip(&outcomes)
            {
                let t = v.rules.entry(rule.name.clone()).or_default();
                let before = *t;
                let transition = t.observe(
                    outcome.verdict,
                    now,
                    rule.for_evaluations,
                    rule.keep_firing_for,
                );
                let after = *t;
                if after != before {
                    rules_changed = true;
                    if let Err(error) = store.put_rule(&key, &rule.name, &after) {
                        metrics.store_errors.inc();
                        tracing::error!(model = %key.model, rule = %rule.name, error = %error, "Writing rule state failed");
                    }
                }
                metrics
                    .rule_firing
                    .with_label_values(&[&key.model, &key.version, &rule.name])
                    .set(i64::from(after.state() == rules::State::Firing));
                for st in [
                    rules::State::Inactive,
                    rules::State::Pending,
                    rules::State::Firing,
                ] {
                    metrics
                        .rule_state
                        .with_label_values(&[&key.model, &key.version, &rule.name, st.as_str()])
                        .set(i64::from(after.state() == st));
                }
                if let Some(mut event) =
                    make_event(&key, shared, rule, outcome, transition, before, after, now)
                {
                    for f in &mut event.features {
                        f.window_samples = report
                            .features
                            .iter()
                            .find(|r| r.name == f.feature)
                            .map(|r| r.window_samples)
                            .unwrap_or(0);
                    }
                    tracing::info!(model = %key.model, version = %key.version, rule = %rule.name, event = event.event.as_str(), "Rule state changed");
                    events.push(event);
                }
            }
            v.last_report = Some(report);
            v.last_outcomes = outcomes;
            v.last_eval_ms = Some(now);
        }
    }
    // Events enter the durable outbox together with the rule states that
    // produced them, in one flush: a restart neither re-fires nor forgets.
    for e in &events {
        if let Err(error) = webhooks.enqueue(e) {
            metrics.store_errors.inc();
            tracing::error!(model = %e.model, rule = %e.rule, error = %error, "Queueing a webhook event failed");
        }
    }
    if rules_changed || !events.is_empty() {
        if let Err(error) = store.flush().await {
            metrics.store_errors.inc();
            tracing::error!(error = %error, "Flushing rule state failed");
        }
    }
    if !events.is_empty() {
        webhooks.wake();
    }
    metrics
        .evaluation_duration
        .observe(started.elapsed().as_secs_f64());
}

fn export(
    metrics: &Metrics,
    key: &ModelKey,
    window: &str,
    report: &Report,
    reference: Option<&Reference>,
    budget: usize,
) {
    // Features are sorted by name, so the budget keeps the same features on
    // every evaluation.
    for f in &report.features[report.features.len().min(budget)..] {
        metrics.drop_feature(key, &f.name);
    }
    for f in report.features.iter().take(budget) {
        let labels = [
            key.model.as_str(),
            key.version.as_str(),
            f.name.as_str(),
            window,
        ];
        metrics
            .window_samples
            .with_label_values(&labels)
            .set(f.window_samples as i64);
        metrics
            .feature_drifting
            .with_label_values(&labels)
            .set(i64::from(f.verdict == Verdict::Drift));
        if let Some(rf) = reference.and_then(|r| r.features.get(&f.name)) {
            metrics
                .reference_samples
                .with_label_values(&labels[..3])
                .set(rf.n() as i64);
        }
        // Counts over the reference bins for the fleet-wide recording rules;
        // without them (categorical, no reference) the bin series go away.
        let rf = reference.and_then(|r| r.features.get(&f.name));
        metrics.export_bins(
            key,
            &f.name,
            window,
            crate::metrics::BinCounts {
                edges: rf.map_or(&[][..], |r| &r.edges),
                reference: rf.map_or(&[][..], |r| &r.bin_counts),
                window: &f.cur_bin_counts,
                window_sum: f.cur_sum,
            },
        );
        // Statistics of an insufficient window are not exported at all:
        // a stale or NaN value must not keep an alert firing.
        metrics.clear_feature_stats(key, &f.name, window);
        if let Some(psi) = f.psi {
            metrics.psi.with_label_values(&labels).set(psi);
        }
        if let Some(ks) = f.ks {
            metrics
                .ks_statistic
                .with_label_values(&labels)
                .set(ks.statistic);
            metrics.ks_p_value.with_label_values(&labels).set(ks.pvalue);
        }
        if let Some(c) = f.chi2 {
            metrics
                .chi2_statistic
                .with_label_values(&labels)
                .set(c.statistic);
            metrics
                .chi2_p_value
                .with_label_values(&labels)
                .set(c.pvalue);
        }
    }
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename the arguments.
fn make_event(
    key: &ModelKey,
    shared: &Shared,
    rule: &rules::Rule,
    outcome: &Outcome,
    transition: Transition,
    before: Tracker,
    after: Tracker,
    now: i64,
) -> Option<webhook::Event> {
    let (kind, started_ms) = match transition {
        Transition::None => return None,
        Transition::Fired => (webhook::EventKind::Firing, after.firing_since_ms?),
        Transition::Resolved => (webhook::EventKind::Resolved, before.firing_since_ms?),
    };
    let features: Vec<webhook::FeatureStats> = outcome
        .values
        .iter()
        .filter(|v| kind == webhook::EventKind::Resolved || v.tripped)
        .map(|v| webhook::FeatureStats {
            feature: v.feature.clone(),
            value: v.value,
            threshold: v.threshold,
            window_samples: 0,
        })
        .collect();
    let summary = match kind {
        webhook::EventKind::Firing => {
            let names: Vec<&str> = features.iter().map(|f| f.feature.as_str()).collect();
            format!(
                "{key}: {} {} {} for {} evaluations on {}",
                rule.statistic.as_str(),
                rule.op.as_str(),
                rule.threshold,
                rule.for_evaluations,
                names.join(", ")
            )
        }
        webhook::EventKind::Resolved => format!("{key}: rule {} resolved", rule.name),
    };
    Some(webhook::Event {
        id: format!(
            "{}/{}/{}/{}/{}",
            key.model,
            key.version,
            rule.name,
            started_ms,
            kind.as_str()
        ),
        event: kind,
        model: key.model.clone(),
        version: key.version.clone(),
        rule: rule.name.clone(),
        statistic: rule.statistic.as_str().to_string(),
        op: rule.op.as_str().to_string(),
        threshold: rule.threshold,
        severity: rule.severity.clone(),
        verdict: outcome.verdict.as_str().to_string(),
        summary,
        window: shared.window_name.clone(),
        features,
        started_at: rfc3339(started_ms),
        resolved_at: (kind == webhook::EventKind::Resolved).then(|| rfc3339(now)),
        timestamp: rfc3339(now),
        targets: rule.webhooks.clone(),
    })
}
