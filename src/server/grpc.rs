//! The `driftd.v1.Driftd` gRPC service: converts protobuf messages into
//! validated domain batches, hands them to the engine, and maps every error
//! to a status whose message names the offending field. Protobuf types and
//! `tonic::Status` never leave this module.

use std::collections::{HashSet, VecDeque};

use tonic::{Request, Response, Status, Streaming};

use crate::{
    domain::{self, Batch, Column, ModelKey, Role, Values, Verdict},
    engine::{self, Handle, IngestAck},
    metrics::{Metrics, RejectReason},
    proto as pb,
};

/// Batches of one Ingest stream that may wait for their acknowledgement at
/// once. Pipelining hides the group-commit latency from a streaming client.
const STREAM_IN_FLIGHT: usize = 32;

/// The gRPC service.
pub struct Service {
    engine: Handle,
    metrics: Metrics,
    max_reference_records: usize,
}

impl Service {
    /// A service feeding `engine`.
    pub fn new(engine: Handle, metrics: Metrics, max_reference_records: usize) -> Self {
        Self {
            engine,
            metrics,
            max_reference_records,
        }
    }

    fn reject(&self, reason: RejectReason, status: Status) -> Status {
        self.metrics.reject(reason);
        status
    }

    fn convert(&self, batch: Option<pb::RecordBatch>, prefix: &str) -> Result<Batch, Status> {
        batch_from_proto(batch).map_err(|(reason, msg)| {
            self.reject(reason, Status::invalid_argument(format!("{prefix}{msg}")))
        })
    }

    fn engine_error(&self, e: engine::Error, prefix: &str) -> Status {
        match e {
            engine::Error::QueueFull => self.reject(
                RejectReason::QueueFull,
                Status::resource_exhausted("ingest queue is full; retry with backoff"),
            ),
            engine::Error::Draining => self.reject(
                RejectReason::Draining,
                Status::unavailable("driftd is shutting down"),
            ),
            engine::Error::KindMismatch {
                column,
                feature,
                expected,
                got,
            } => self.reject(
                RejectReason::KindMismatch,
                Status::invalid_argument(format!(
                    "{prefix}batch.columns[{column}]: feature {feature:?} is {expected}, got {got} values"
                )),
            ),
            engine::Error::Store(error) => {
                tracing::error!(error = %error, "Store write failed");
                self.reject(
                    RejectReason::StoreError,
                    Status::unavailable("store unavailable; batch not acknowledged"),
                )
            }
            engine::Error::Flush => self.reject(
                RejectReason::StoreError,
                Status::unavailable("store flush failed; batch not acknowledged"),
            ),
        }
    }
}

#[tonic::async_trait]
impl pb::driftd_server::Driftd for Service {
    async fn ingest(
        &self,
        request: Request<Streaming<pb::IngestRequest>>,
    ) -> Result<Response<pb::IngestSummary>, Status> {
        let mut stream = request.into_inner();
        let mut summary = pb::IngestSummary::default();
        let mut in_flight: VecDeque<(
            String,
            tokio::task::JoinHandle<Result<IngestAck, engine::Error>>,
        )> = VecDeque::new();
        let mut idx = 0u64;
        let add = |summary: &mut pb::IngestSummary, a: IngestAck| {
            summary.batches += 1;
            summary.records += a.records;
            summary.missing_values += a.missing_values;
        };
        while let Some(msg) = stream.message().await? {
            let prefix = format!("batch {idx}: ");
            let batch = self.convert(msg.batch, &prefix)?;
            if in_flight.len() >= STREAM_IN_FLIGHT {
                if let Some((p, fut)) = in_flight.pop_front() {
                    let a = wait(fut).await.map_err(|e| self.engine_error(e, &p))?;
                    add(&mut summary, a);
                }
            }
            let engine = self.engine.clone();
            in_flight.push_back((
                prefix,
                tokio::spawn(async move { engine.ingest_waiting(batch).await }),
            ));
            idx += 1;
        }
        while let Some((p, fut)) = in_flight.pop_front() {
            let a = wait(fut).await.map_err(|e| self.engine_error(e, &p))?;
            add(&mut summary, a);
        }
        Ok(Response::new(summary))
    }

    async fn ingest_batch(
        &self,
        request: Request<pb::IngestRequest>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        let batch = self.convert(request.into_inner().batch, "")?;
        let ack = self
            .engine
            .ingest(batch)
            .await
            .map_err(|e| self.engine_error(e, ""))?;
        Ok(Response::new(pb::IngestResponse {
            records: ack.records,
            missing_values: ack.missing_values,
        }))
    }

    async fn set_reference(
        &self,
        request: Request<Streaming<pb::SetReferenceRequest>>,
    ) -> Result<Response<pb::SetReferenceResponse>, Status> {
        let mut stream = request.into_inner();
        let mut batches: Vec<Batch> = Vec::new();
        let mut rows = 0usize;
        while let Some(msg) = stream.message().await? {
            let prefix = format!("batch {}: ", batches.len());
            let batch = self.convert(msg.batch, &prefix)?;
            if let Some(first) = batches.first() {
                if first.key != batch.key {
                    return Err(self.reject(
                        RejectReason::InvalidName,
                        Status::invalid_argument(format!(
                            "{prefix}batch.model/batch.version: {} differs from the stream's first batch {}",
                            batch.key, first.key
                        )),
                    ));
                }
            }
            rows += batch.n_rows;
            if rows > self.max_reference_records {
                return Err(self.reject(
                    RejectReason::TooLarge,
                    Status::resource_exhausted(format!(
                        "{prefix}reference exceeds ingest.max_reference_records = {}",
                        self.max_reference_records
                    )),
                ));
            }
            batches.push(batch);
        }
        let Some(key) = batches.first().map(|b| b.key.clone()) else {
            return Err(self.reject(
                RejectReason::EmptyBatch,
                Status::invalid_argument("stream: no batches; a reference needs at least one"),
            ));
        };
        let ack = self
            .engine
            .set_reference(key.clone(), batches)
            .await
            .map_err(|e| self.engine_error(e, ""))?;
        Ok(Response::new(pb::SetReferenceResponse {
            model: key.model,
            version: key.version,
            records: ack.records,
            features: ack.features,
        }))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let req = request.into_inner();
        domain::validate_name(&req.model)
            .map_err(|e| Status::invalid_argument(format!("model: {e}")))?;
        let version = (!req.version.is_empty()).then_some(req.version.as_str());
        let versions = self
            .engine
            .reader()
            .status(&req.model, version)
            .ok_or_else(|| Status::not_found(format!("model {:?} is unknown", req.model)))?;
        Ok(Response::new(pb::GetStatusResponse {
            versions: versions.into_iter().map(version_to_proto).collect(),
        }))
    }
}

async fn wait(
    handle: tokio::task::JoinHandle<Result<IngestAck, engine::Error>>,
) -> Result<IngestAck, engine::Error> {
    // A join error means the task was cancelled or panicked; either way the
    // batch was not acknowledged, which is what Draining tells the client.
    handle.await.unwrap_or(Err(engine::Error::Draining))
}

type Rejection = (RejectReason, String);

/// Validates a protobuf batch. Error messages name the field.
fn batch_from_proto(batch: Option<pb::RecordBatch>) -> Result<Batch, Rejection> {
    let b = batch.ok_or((RejectReason::EmptyBatch, "batch: required".to_string()))?;
    domain::validate_name(&b.model)
        .map_err(|e| (RejectReason::InvalidName, format!("batch.model: {e}")))?;
    let version = if b.version.is_empty() {
        domain::DEFAULT_VERSION.to_string()
    } else {
        domain::validate_name(&b.version)
            .map_err(|e| (RejectReason::InvalidName, format!("batch.version: {e}")))?;
        b.version
    };
    if b.columns.is_empty() {
        return Err((
            RejectReason::EmptyBatch,
            "batch.columns: must not be empty".into(),
        ));
    }
    let mut names = HashSet::with_capacity(b.columns.len());
    let mut columns = Vec::with_capacity(b.columns.len());
    let mut n_rows = None;
    for (i, c) in b.columns.into_iter().enumerate() {
        domain::validate_name(&c.name).map_err(|e| {
            (
                RejectReason::InvalidName,
                format!("batch.columns[{i}].name: {e}"),
            )
        })?;
        if !names.insert(c.name.clone()) {
            return Err((
                RejectReason::DuplicateColumn,
                format!("batch.columns[{i}].name: duplicate column {:?}", c.name),
            ));
        }
        let role = match pb::ColumnRole::try_from(c.role) {
            Ok(pb::ColumnRole::Output) => Role::Output,
            Ok(pb::ColumnRole::Input | pb::ColumnRole::Unspecified) => Role::Input,
            Err(_) => {
                return Err((
                    RejectReason::EmptyBatch,
                    format!("batch.columns[{i}].role: unknown value {}", c.role),
                ))
            }
        };
        let values = match c.values {
            Some(pb::column::Values::Numeric(v)) => Values::Numeric(v.values),
            Some(pb::column::Values::Categorical(v)) => Values::Categorical(v.values),
            None => {
                return Err((
                    RejectReason::EmptyBatch,
                    format!("batch.columns[{i}].values: must be set (numeric or categorical)"),
                ))
            }
        };
        match n_rows {
            None => {
                if values.is_empty() {
                    return Err((
                        RejectReason::EmptyBatch,
                        format!("batch.columns[{i}]: has no values"),
                    ));
                }
                n_rows = Some(values.len());
            }
            Some(n) if n != values.len() => {
                return Err((
                    RejectReason::UnequalLengths,
                    format!(
                        "batch.columns[{i}]: has {} values, batch.columns[0] has {n}",
                        values.len()
                    ),
                ))
            }
            Some(_) => {}
        }
        columns.push(Column {
            name: c.name,
            role,
            values,
        });
    }
    // At least one column exists, so n_rows is set.
    let n_rows = n_rows.unwrap_or(0);
    for (field, len) in [
        ("batch.timestamps_unix_ms", b.timestamps_unix_ms.len()),
        ("batch.request_ids", b.request_ids.len()),
    ] {
        if len != 0 && len != n_rows {
            return Err((
                RejectReason::UnequalLengths,
                format!("{field}: has {len} entries, expected 0 or {n_rows} (one per row)"),
            ));
        }
    }
    Ok(Batch {
        key: ModelKey {
            model: b.model,
            version,
        },
        columns,
        n_rows,
    })
}

fn verdict_to_proto(v: Verdict) -> i32 {
    match v {
        Verdict::Ok => pb::Verdict::Ok as i32,
        Verdict::Drift => pb::Verdict::Drift as i32,
        Verdict::InsufficientData => pb::Verdict::InsufficientData as i32,
    }
}

fn version_to_proto(v: engine::VersionStatus) -> pb::VersionStatus {
    use crate::detector::RuleState;
    pb::VersionStatus {
        model: v.model,
        version: v.version,
        records_ingested: v.records_ingested,
        reference_records: v.reference_records,
        reference_source: v.reference_source.unwrap_or_default().to_string(),
        window: v.window,
        window_records: v.window_records,
        last_evaluation_unix_ms: v.last_evaluation_unix_ms.unwrap_or(0),
        verdict: verdict_to_proto(v.verdict),
        features: v
            .features
            .into_iter()
            .map(|f| pb::FeatureStatus {
                name: f.name,
                role: match f.role {
                    Role::Input => pb::ColumnRole::Input as i32,
                    Role::Output => pb::ColumnRole::Output as i32,
                },
                kind: f.kind.as_str().to_string(),
                window_samples: f.window_samples,
                window_missing: f.window_missing,
                reference_samples: f.reference_samples,
                psi: f.psi,
                ks_statistic: f.ks_statistic,
                ks_pvalue: f.ks_pvalue,
                chi2_statistic: f.chi2_statistic,
                chi2_pvalue: f.chi2_pvalue,
                verdict: verdict_to_proto(f.verdict),
            })
            .collect(),
        rules: v
            .rules
            .into_iter()
            .map(|r| pb::RuleStatus {
                name: r.name.to_string(),
                state: match r.state {
                    RuleState::Inactive => pb::RuleState::Inactive as i32,
                    RuleState::Pending => pb::RuleState::Pending as i32,
                    RuleState::Firing => pb::RuleState::Firing as i32,
                },
                consecutive: r.consecutive,
                firing_since_unix_ms: r.firing_since_unix_ms.unwrap_or(0),
            })
            .collect(),
    }
}
