//! The `driftd.v1.Driftd` gRPC service: converts protobuf messages into
//! validated domain batches, hands them to the engine, and maps every error
//! to a status whose message names the offending field. Protobuf types and
//! `tonic::Status` never leave this module.

use std::{
    collections::{HashSet, VecDeque},
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tonic::{codegen::http, Code, Request, Response, Status, Streaming};

use crate::{
    auth,
    domain::{self, Batch, Column, ModelKey, NameRules, Role, Values, Verdict},
    engine::{self, Handle, IngestAck},
    inference,
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
    names: NameRules,
}

impl Service {
    /// A service feeding `engine`, accepting names by `names`.
    pub fn new(
        engine: Handle,
        metrics: Metrics,
        max_reference_records: usize,
        names: NameRules,
    ) -> Self {
        Self {
            engine,
            metrics,
            max_reference_records,
            names,
        }
    }

    fn reject(&self, reason: RejectReason, status: Status) -> Status {
        self.metrics.reject(reason);
        status
    }

    /// Counts a rejection and turns it into `INVALID_ARGUMENT`, the
    /// message prefixed with the batch's place in a stream.
    fn invalid(&self, (reason, msg): Rejection, prefix: &str) -> Status {
        self.reject(reason, Status::invalid_argument(format!("{prefix}{msg}")))
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
                    Status::unavailable(format!(
                        "{prefix}store unavailable ({error}); batch not acknowledged, retry later"
                    )),
                )
            }
            engine::Error::Flush(error) => self.reject(
                RejectReason::StoreError,
                Status::unavailable(format!(
                    "{prefix}store flush failed ({error}); batch not acknowledged, retry later"
                )),
            ),
            engine::Error::Limit {
                reason,
                field,
                message,
            } => {
                let text = format!("{prefix}{field}: {message}");
                self.reject(
                    reason,
                    match reason {
                        RejectReason::UnknownModel => Status::not_found(text),
                        RejectReason::TooManyRows
                        | RejectReason::TooManyColumns
                        | RejectReason::TooManyModels
                        | RejectReason::TooManyVersions
                        | RejectReason::TooManyFeatures => Status::resource_exhausted(text),
                        _ => Status::invalid_argument(text),
                    },
                )
            }
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
            summary.duplicates += u64::from(a.duplicate);
        };
        while let Some(msg) = stream.message().await? {
            let prefix = format!("batch {idx}: ");
            let (batch, producer) =
                ingest_request(msg, &self.names).map_err(|r| self.invalid(r, &prefix))?;
            if in_flight.len() >= STREAM_IN_FLIGHT {
                if let Some((p, fut)) = in_flight.pop_front() {
                    let a = wait(fut).await.map_err(|e| self.engine_error(e, &p))?;
                    add(&mut summary, a);
                }
            }
            let engine = self.engine.clone();
            in_flight.push_back((
                prefix,
                tokio::spawn(async move { engine.ingest_waiting(batch, producer).await }),
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
        let (batch, producer) =
            ingest_request(request.into_inner(), &self.names).map_err(|r| self.invalid(r, ""))?;
        let ack = self
            .engine
            .ingest_from(batch, producer)
            .await
            .map_err(|e| self.engine_error(e, ""))?;
        Ok(Response::new(pb::IngestResponse {
            records: ack.records,
            missing_values: ack.missing_values,
            duplicate: ack.duplicate,
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
            let batch =
                batch_from_proto(msg.batch, &self.names).map_err(|r| self.invalid(r, &prefix))?;
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
            .set_reference(key.clone(), batches, crate::reference::Source::SetReference)
            .await
            .map_err(|e| self.engine_error(e, ""))?;
        Ok(Response::new(pb::SetReferenceResponse {
            model: key.model,
            version: key.version,
            records: ack.records,
            features: ack.features,
        }))
    }

    async fn mirror_inference(
        &self,
        request: Request<pb::MirrorInferenceRequest>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        let req = request.into_inner();
        let batch = mirror_to_batch(req, &self.names).map_err(|r| self.invalid(r, ""))?;
        let ack = self
            .engine
            .ingest(batch)
            .await
            .map_err(|e| self.engine_error(e, ""))?;
        Ok(Response::new(pb::IngestResponse {
            records: ack.records,
            missing_values: ack.missing_values,
            duplicate: ack.duplicate,
        }))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let req = request.into_inner();
        self.names
            .check(&req.model)
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

/// An interceptor that lets a call through only with a valid
/// `authorization: Bearer <token>` metadata entry (when `enforce` and a
/// token is configured). Interceptors run on the request's metadata before
/// the message is decoded, so a refused call costs no decoding.
pub fn authenticate(
    guard: auth::Guard,
    enforce: bool,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |request: Request<()>| {
        if !enforce {
            return Ok(request);
        }
        let value = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        match guard.check(value) {
            Ok(()) => Ok(request),
            Err(denial) => Err(Status::unauthenticated(denial.message())),
        }
    }
}

// === impl Edge ===

/// What the gRPC edge enforces before and around the service: how long a
/// request body may stay silent, and how the codec's own refusals (a
/// message over `server.max_message_bytes`, compressed or not, or bytes
/// that are not protobuf) are answered and counted. Those refusals happen
/// inside tonic, before a handler runs, so they are recognised on the way
/// out by their status.
#[derive(Clone)]
pub struct EdgeLayer {
    metrics: Metrics,
    idle_timeout: Duration,
    max_message_bytes: usize,
}

impl EdgeLayer {
    /// The layer for `driftd.v1.Driftd`.
    pub fn new(metrics: Metrics, idle_timeout: Duration, max_message_bytes: usize) -> Self {
        Self {
            metrics,
            idle_timeout,
            max_message_bytes,
        }
    }
}

impl<S> tower_layer::Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`EdgeLayer`] wraps around the routes.
#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    layer: EdgeLayer,
}

impl<S, B> tonic::codegen::Service<http::Request<tonic::body::Body>> for Edge<S>
where
    S: tonic::codegen::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let ours = req.uri().path().starts_with("/driftd.v1.Driftd/");
        let layer = self.layer.clone();
        let req = req.map(|body| {
            tonic::body::Body::new(IdleBody {
                inner: body,
                timeout: layer.idle_timeout,
                sleep: None,
                metrics: layer.metrics.clone(),
            })
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            if ours {
                layer.rewrite(res.headers_mut());
            }
            Ok(res)
        })
    }
}

impl EdgeLayer {
    /// Rewrites and counts a refusal tonic's codec produced. Its statuses
    /// are recognised by their messages, which a test pins.
    fn rewrite(&self, headers: &mut http::HeaderMap) {
        let Some(status) = Status::from_header_map(headers) else {
            return;
        };
        let msg = status.message();
        let max = self.max_message_bytes;
        let (reason, new) = match status.code() {
            Code::OutOfRange if msg.contains("message length too large") => (
                RejectReason::MessageTooLarge,
                Status::resource_exhausted(format!(
                    "request: message larger than server.max_message_bytes = {max} ({msg})"
                )),
            ),
            Code::ResourceExhausted if msg.starts_with("Error decompressing") => (
                RejectReason::MessageTooLarge,
                Status::resource_exhausted(format!(
                    "request: decompressed message larger than server.max_message_bytes = {max}"
                )),
            ),
            Code::Internal
                if msg.contains("failed to decode Protobuf message")
                    || msg.starts_with("protocol error") =>
            {
                (
                    RejectReason::Malformed,
                    Status::invalid_argument(format!("request: not a valid message ({msg})")),
                )
            }
            _ => return,
        };
        self.metrics.reject(reason);
        // The new status has the same headers, so this cannot fail.
        let _ = new.add_header(headers);
    }
}

/// A request body that fails with DEADLINE_EXCEEDED when no frame arrives
/// for `timeout` while the service waits for one, so a client that opens a
/// call and never sends does not hold it (and a stream slot) forever.
struct IdleBody {
    inner: tonic::body::Body,
    timeout: Duration,
    /// Armed while the service waits for a frame.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    metrics: Metrics,
}

impl http_body::Body for IdleBody {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.sleep = None;
            return Poll::Ready(frame);
        }
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.metrics.reject(RejectReason::IdleTimeout);
            return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                "request: nothing received for {} (limits.stream_idle_timeout); batches sent before are kept",
                humantime::format_duration(timeout)
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// === impl Connection ===

/// Bounds the connections of `incoming` at `max` open at once: one beyond
/// it is closed as soon as it is accepted and counted, rather than served
/// or left waiting. A connection that sends nothing for `idle_timeout`
/// after it was accepted is closed too.
pub fn limit_connections<S, T, E>(
    incoming: S,
    max: usize,
    idle_timeout: Duration,
    metrics: Metrics,
) -> impl tokio_stream::Stream<Item = Result<Connection<T>, E>>
where
    S: tokio_stream::Stream<Item = Result<T, E>>,
{
    use tokio_stream::StreamExt;
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    incoming.filter_map(move |conn| match conn {
        Ok(io) => match slots.clone().try_acquire_owned() {
            Ok(permit) => Some(Ok(Connection {
                io,
                _permit: permit,
                first_read: Some(Box::pin(tokio::time::sleep(idle_timeout))),
                metrics: metrics.clone(),
            })),
            Err(_) => {
                metrics.reject(RejectReason::TooManyConnections);
                tracing::debug!(max, "Connection refused: limits.max_connections reached");
                None
            }
        },
        Err(e) => Some(Err(e)),
    })
}

/// An accepted connection holding one of the connection slots until it
/// closes.
pub struct Connection<T> {
    io: T,
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// Runs until the first byte arrives.
    first_read: Option<Pin<Box<tokio::time::Sleep>>>,
    metrics: Metrics,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Connection<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(sleep) = this.first_read.as_mut() {
            match &res {
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.first_read = None,
                Poll::Pending if sleep.as_mut().poll(cx).is_ready() => {
                    this.first_read = None;
                    this.metrics.reject(RejectReason::IdleTimeout);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "nothing received on a new connection (limits.stream_idle_timeout)",
                    )));
                }
                _ => {}
            }
        }
        res
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Connection<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Connection<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

async fn wait(
    handle: tokio::task::JoinHandle<Result<IngestAck, engine::Error>>,
) -> Result<IngestAck, engine::Error> {
    // A join error means the task was cancelled or panicked; either way the
    // batch was not acknowledged, which is what Draining tells the client.
    handle.await.unwrap_or(Err(engine::Error::Draining))
}

/// A refused request: the reason it is counted under
/// (`driftd_ingest_rejected_total`) and a message that starts with the
/// offending field, e.g. `batch.columns[2].name: ...`.
pub type Rejection = (RejectReason, String);

/// Validates one `IngestRequest` as `IngestBatch` does, and as `Ingest` does
/// for each message of its stream: the idempotent producer, if the batch
/// names one, then the batch. Pure (no engine, no metrics), so the fuzz
/// tests (`tests/fuzz/`) call exactly what the service calls.
///
/// # Errors
/// The first problem found, as a [`Rejection`] naming the field.
pub fn ingest_request(
    msg: pb::IngestRequest,
    rules: &NameRules,
) -> Result<(Batch, Option<engine::Producer>), Rejection> {
    let producer = match msg.batch.as_ref().filter(|b| !b.producer_id.is_empty()) {
        None => None,
        Some(b) => {
            rules
                .check(&b.producer_id)
                .map_err(|e| (RejectReason::of_name(&e), format!("batch.producer_id: {e}")))?;
            Some(engine::Producer {
                id: b.producer_id.clone(),
                sequence: b.sequence,
            })
        }
    };
    Ok((batch_from_proto(msg.batch, rules)?, producer))
}

/// Validates a protobuf batch (of `IngestRequest` or `SetReferenceRequest`)
/// into a domain [`Batch`]: valid unique names, known roles, values set,
/// every column and the per-row lists of the same non-zero length.
///
/// # Errors
/// The first problem found, as a [`Rejection`] naming the field.
pub fn batch_from_proto(
    batch: Option<pb::RecordBatch>,
    rules: &NameRules,
) -> Result<Batch, Rejection> {
    let b = batch.ok_or((RejectReason::EmptyBatch, "batch: required".to_string()))?;
    rules
        .check(&b.model)
        .map_err(|e| (RejectReason::of_name(&e), format!("batch.model: {e}")))?;
    let version = if b.version.is_empty() {
        domain::DEFAULT_VERSION.to_string()
    } else {
        rules
            .check(&b.version)
            .map_err(|e| (RejectReason::of_name(&e), format!("batch.version: {e}")))?;
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
        rules.check(&c.name).map_err(|e| {
            (
                RejectReason::of_name(&e),
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

/// One OIP tensor, request or response side, before decoding.
struct RawTensor<'a> {
    name: &'a str,
    datatype: &'a str,
    shape: &'a [i64],
    contents: Option<&'a pb::inference::InferTensorContents>,
}

/// Decodes OIP tensors, typed or raw, into [`inference::Tensor`]s.
fn oip_tensors(
    tensors: Vec<RawTensor<'_>>,
    raw: &[Vec<u8>],
    field: &str,
    raw_field: &str,
) -> Result<Vec<inference::Tensor>, String> {
    if !raw.is_empty() && raw.len() != tensors.len() {
        return Err(format!(
            "{raw_field}: has {} entries for {} tensors",
            raw.len(),
            tensors.len()
        ));
    }
    tensors
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let data = if let Some(blob) = raw.get(i) {
                inference::decode_raw(t.datatype, blob, &format!("{raw_field}[{i}]"))
                    .map_err(|e| e.0)?
            } else {
                let c = t.contents.cloned().unwrap_or_default();
                let num = |v: Vec<f64>| inference::Data::Numeric(v);
                match t.datatype {
                    "BOOL" => num(c
                        .bool_contents
                        .iter()
                        .map(|&b| f64::from(u8::from(b)))
                        .collect()),
                    "INT8" | "INT16" | "INT32" => {
                        num(c.int_contents.iter().map(|&x| f64::from(x)).collect())
                    }
                    "INT64" => num(c.int64_contents.iter().map(|&x| x as f64).collect()),
                    "UINT8" | "UINT16" | "UINT32" => {
                        num(c.uint_contents.iter().map(|&x| f64::from(x)).collect())
                    }
                    "UINT64" => num(c.uint64_contents.iter().map(|&x| x as f64).collect()),
                    "FP32" => num(c.fp32_contents.iter().map(|&x| f64::from(x)).collect()),
                    "FP64" => num(c.fp64_contents),
                    "BYTES" => inference::Data::Bytes(
                        c.bytes_contents
                            .into_iter()
                            .map(|b| {
                                String::from_utf8(b).map_err(|_| {
                                    format!("{field}[{i}].contents.bytes_contents: not valid UTF-8")
                                })
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                    other => {
                        return Err(format!(
                            "{field}[{i}].datatype: unsupported datatype {:?}",
                            inference::clip(other)
                        ))
                    }
                }
            };
            Ok(inference::Tensor {
                name: t.name.to_string(),
                shape: t.shape.to_vec(),
                data,
            })
        })
        .collect()
}

/// Validates a mirrored OIP exchange (`MirrorInferenceRequest`) and joins
/// it into one batch. Pure, as [`ingest_request`].
///
/// # Errors
/// The first problem found, as a [`Rejection`] naming the field.
pub fn mirror_to_batch(
    req: pb::MirrorInferenceRequest,
    names: &NameRules,
) -> Result<Batch, Rejection> {
    let bad = |m: String| (RejectReason::EmptyBatch, m);
    if req.request.is_none() && req.response.is_none() {
        return Err(bad("request/response: at least one must be set".into()));
    }
    // The override, else the request's value, else the response's.
    let pick = |own: &str, req_v: Option<&str>, resp_v: Option<&str>| {
        [Some(own), req_v, resp_v]
            .into_iter()
            .flatten()
            .find(|s| !s.is_empty())
            .map(str::to_string)
    };
    let model = pick(
        &req.model,
        req.request.as_ref().map(|r| r.model_name.as_str()),
        req.response.as_ref().map(|r| r.model_name.as_str()),
    )
    .unwrap_or_default();
    names.check(&model).map_err(|e| {
        (
            RejectReason::of_name(&e),
            format!("model (or request.model_name): {e}"),
        )
    })?;
    let version = pick(
        &req.version,
        req.request.as_ref().map(|r| r.model_version.as_str()),
        req.response.as_ref().map(|r| r.model_version.as_str()),
    )
    .unwrap_or_else(|| domain::DEFAULT_VERSION.to_string());
    names.check(&version).map_err(|e| {
        (
            RejectReason::of_name(&e),
            format!("version (or request.model_version): {e}"),
        )
    })?;
    let mut parts = Vec::new();
    if let Some(r) = &req.request {
        let tensors = r
            .inputs
            .iter()
            .map(|t| RawTensor {
                name: &t.name,
                datatype: &t.datatype,
                shape: &t.shape,
                contents: t.contents.as_ref(),
            })
            .collect();
        let t = oip_tensors(
            tensors,
            &r.raw_input_contents,
            "request.inputs",
            "request.raw_input_contents",
        )
        .map_err(bad)?;
        parts.push(
            inference::tensors_to_columns(t, Role::Input, None, "request.inputs")
                .map_err(|e| bad(e.0))?,
        );
    }
    if let Some(r) = &req.response {
        let tensors = r
            .outputs
            .iter()
            .map(|t| RawTensor {
                name: &t.name,
                datatype: &t.datatype,
                shape: &t.shape,
                contents: t.contents.as_ref(),
            })
            .collect();
        let t = oip_tensors(
            tensors,
            &r.raw_output_contents,
            "response.outputs",
            "response.raw_output_contents",
        )
        .map_err(bad)?;
        parts.push(
            inference::tensors_to_columns(t, Role::Output, None, "response.outputs")
                .map_err(|e| bad(e.0))?,
        );
    }
    let n_rows = parts[0].n_rows;
    if let Some(p) = parts.get(1) {
        if p.n_rows != n_rows {
            return Err((
                RejectReason::UnequalLengths,
                format!(
                    "response.outputs: batch size {} differs from the request's {n_rows}",
                    p.n_rows
                ),
            ));
        }
    }
    if n_rows == 0 {
        return Err(bad("request.inputs: batch size is 0".into()));
    }
    let columns = inference::join_columns(parts);
    // Tensor names become column names only after sanitising, so distinct
    // tensors of one side can give one name twice; IngestBatch refuses that
    // too. (An output named like an input is renamed by the join.)
    if let Some(name) = inference::duplicate_column(&columns) {
        return Err((
            RejectReason::DuplicateColumn,
            format!(
                "request.inputs/response.outputs: tensor names give column {:?} twice once sanitised",
                inference::clip(name)
            ),
        ));
    }
    Ok(Batch {
        key: ModelKey { model, version },
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

fn feature_to_proto(f: engine::FeatureStatus) -> pb::FeatureStatus {
    pb::FeatureStatus {
        name: f.name,
        role: match f.role {
            Role::Input => pb::ColumnRole::Input as i32,
            Role::Output => pb::ColumnRole::Output as i32,
        },
        kind: f.kind.as_str().to_string(),
        window_samples: f.window_samples,
        window_missing: f.window_missing,
        window_sample_size: f.window_sample_size,
        reference_samples: f.reference_samples,
        psi: f.psi,
        ks_statistic: f.ks_statistic,
        ks_pvalue: f.ks_pvalue,
        chi2_statistic: f.chi2_statistic,
        chi2_pvalue: f.chi2_pvalue,
        verdict: verdict_to_proto(f.verdict),
    }
}

fn version_to_proto(v: engine::VersionStatus) -> pb::VersionStatus {
    use crate::rules::State as RuleState;
    pb::VersionStatus {
        reference_hash: v.reference_hash.unwrap_or_default(),
        windows: v
            .windows
            .into_iter()
            .map(|w| pb::WindowStatus {
                name: w.name,
                records: w.records,
                sample_rows: w.sample_rows,
                features: w.features.into_iter().map(feature_to_proto).collect(),
            })
            .collect(),
        model: v.model,
        version: v.version,
        records_ingested: v.records_ingested,
        reference_records: v.reference_records,
        reference_source: v.reference_source.unwrap_or_default().to_string(),
        window: v.window,
        window_records: v.window_records,
        last_evaluation_unix_ms: v.last_evaluation_unix_ms.unwrap_or(0),
        verdict: verdict_to_proto(v.verdict),
        features: v.features.into_iter().map(feature_to_proto).collect(),
        rules: v
            .rules
            .into_iter()
            .map(|r| pb::RuleStatus {
                verdict: verdict_to_proto(r.verdict),
                statistic: r.statistic.to_string(),
                threshold: r.threshold,
                tripped_features: r.tripped_features,
                severity: r.severity,
                name: r.name.to_string(),
                state: match r.state {
                    RuleState::Inactive => pb::RuleState::Inactive as i32,
                    RuleState::Pending => pb::RuleState::Pending as i32,
                    RuleState::Firing => pb::RuleState::Firing as i32,
                },
                consecutive: r.consecutive,
                firing_since_unix_ms: r.firing_since_unix_ms.unwrap_or(0),
                window: r.window,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::inference::{
        model_infer_request::InferInputTensor, InferTensorContents, ModelInferRequest,
    };

    fn mirror(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> Batch {
        mirror_to_batch(
            pb::MirrorInferenceRequest {
                request: Some(ModelInferRequest {
                    model_name: "m".into(),
                    inputs,
                    raw_input_contents: raw,
                    ..Default::default()
                }),
                ..Default::default()
            },
            &NameRules::default(),
        )
        .unwrap()
    }

    fn tensor(
        name: &str,
        datatype: &str,
        shape: Vec<i64>,
        contents: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            contents,
            ..Default::default()
        }
    }

    #[test]
    fn raw_fp32_and_int64_decode_to_the_typed_values() {
        let fp32 = vec![0.5f32, -1.25, 3.0, 1e-3, 7.5, -0.0];
        let int64 = vec![-3i64, 0, 1 << 53];
        let typed = mirror(
            vec![
                tensor(
                    "x",
                    "FP32",
                    vec![3, 2],
                    Some(InferTensorContents {
                        fp32_contents: fp32.clone(),
                        ..Default::default()
                    }),
                ),
                tensor(
                    "n",
                    "INT64",
                    vec![3],
                    Some(InferTensorContents {
                        int64_contents: int64.clone(),
                        ..Default::default()
                    }),
                ),
            ],
            vec![],
        );
        let raw = mirror(
            vec![
                tensor("x", "FP32", vec![3, 2], None),
                tensor("n", "INT64", vec![3], None),
            ],
            vec![
                fp32.iter().flat_map(|v| v.to_le_bytes()).collect(),
                int64.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ],
        );
        assert_eq!(typed, raw);
        let names: Vec<&str> = typed.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["x_0", "x_1", "n"]);
        assert_eq!(
            typed.columns[1].values,
            Values::Numeric(vec![f64::from(-1.25f32), f64::from(1e-3f32), 0.0])
        );
        assert_eq!(
            typed.columns[2].values,
            Values::Numeric(vec![-3.0, 0.0, 9007199254740992.0])
        );
        assert_eq!(typed.key.version, "default");
    }

    #[test]
    fn inconsistent_mirrors_are_rejected_naming_the_field() {
        let names = NameRules::default();
        let err = mirror_to_batch(pb::MirrorInferenceRequest::default(), &names).unwrap_err();
        assert!(err.1.contains("request/response"), "{err:?}");
        let err = mirror_to_batch(
            pb::MirrorInferenceRequest {
                request: Some(ModelInferRequest {
                    model_name: "m".into(),
                    inputs: vec![tensor("x", "FP32", vec![2], None)],
                    raw_input_contents: vec![vec![0; 4]],
                    ..Default::default()
                }),
                ..Default::default()
            },
            &names,
        )
        .unwrap_err();
        assert!(
            err.1
                .contains("request.inputs[0] (x): shape [2] needs 2 elements, data has 1"),
            "{err:?}"
        );
        // Distinct tensor names that sanitise to one column name.
        let fp64 = |v: Vec<f64>| {
            Some(InferTensorContents {
                fp64_contents: v,
                ..Default::default()
            })
        };
        let err = mirror_to_batch(
            pb::MirrorInferenceRequest {
                request: Some(ModelInferRequest {
                    model_name: "m".into(),
                    inputs: vec![
                        tensor("a b", "FP64", vec![1], fp64(vec![1.0])),
                        tensor("a_b", "FP64", vec![1], fp64(vec![2.0])),
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            },
            &names,
        )
        .unwrap_err();
        assert_eq!(err.0, RejectReason::DuplicateColumn);
        assert!(err.1.contains("column \"a_b\" twice"), "{err:?}");
    }
}
