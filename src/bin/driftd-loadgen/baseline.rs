//! The decode-only baseline: the `driftd.v1.Driftd` service on the same
//! tonic server stack and message limit as driftd, which decodes every
//! batch, counts its rows and values, and discards it. Whatever driftd
//! achieves is measured against this ceiling, in the same run.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    sync::Arc,
};

use tonic::{Request, Response, Status, Streaming};

use driftd::proto as pb;

#[derive(Default)]
struct Totals {
    batches: AtomicU64,
    records: AtomicU64,
    values: AtomicU64,
}

/// The decode-and-discard service.
#[derive(Clone, Default)]
struct Baseline {
    totals: Arc<Totals>,
}

/// (rows, values) of a batch: rows are the first column's length.
fn count(batch: Option<&pb::RecordBatch>) -> Result<(u64, u64), Status> {
    let b = batch.ok_or_else(|| Status::invalid_argument("batch: required"))?;
    let lens: Vec<u64> = b
        .columns
        .iter()
        .map(|c| match &c.values {
            Some(pb::column::Values::Numeric(v)) => v.values.len() as u64,
            Some(pb::column::Values::Categorical(v)) => v.values.len() as u64,
            None => 0,
        })
        .collect();
    let rows = lens.first().copied().unwrap_or(0);
    Ok((rows, lens.iter().sum()))
}

impl Baseline {
    fn note(&self, rows: u64, values: u64) {
        self.totals.batches.fetch_add(1, Ordering::Relaxed);
        self.totals.records.fetch_add(rows, Ordering::Relaxed);
        self.totals.values.fetch_add(values, Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl pb::driftd_server::Driftd for Baseline {
    async fn ingest(
        &self,
        request: Request<Streaming<pb::IngestRequest>>,
    ) -> Result<Response<pb::IngestSummary>, Status> {
        let mut stream = request.into_inner();
        let mut summary = pb::IngestSummary::default();
        while let Some(msg) = stream.message().await? {
            let (rows, values) = count(msg.batch.as_ref())?;
            self.note(rows, values);
            summary.batches += 1;
            summary.records += rows;
        }
        Ok(Response::new(summary))
    }

    async fn ingest_batch(
        &self,
        request: Request<pb::IngestRequest>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        let (rows, values) = count(request.get_ref().batch.as_ref())?;
        self.note(rows, values);
        Ok(Response::new(pb::IngestResponse {
            records: rows,
            ..Default::default()
        }))
    }

    async fn set_reference(
        &self,
        request: Request<Streaming<pb::SetReferenceRequest>>,
    ) -> Result<Response<pb::SetReferenceResponse>, Status> {
        let mut stream = request.into_inner();
        let mut records = 0;
        while let Some(msg) = stream.message().await? {
            records += count(msg.batch.as_ref())?.0;
        }
        Ok(Response::new(pb::SetReferenceResponse {
            records,
            ..Default::default()
        }))
    }

    async fn mirror_inference(
        &self,
        _request: Request<pb::MirrorInferenceRequest>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        Err(Status::unimplemented("the baseline only decodes batches"))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        Err(Status::unimplemented("the baseline keeps no state"))
    }
}

/// Serves the baseline on `addr` until SIGTERM or SIGINT, then prints what
/// it decoded to standard error.
///
/// # Errors
/// Binding or serving failed.
pub async fn serve(addr: SocketAddr, max_message_bytes: usize) -> anyhow::Result<()> {
    let svc = Baseline::default();
    let totals = svc.totals.clone();
    let server = pb::driftd_server::DriftdServer::new(svc)
        .max_decoding_message_size(max_message_bytes)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "driftd-loadgen baseline: listening on {}",
        listener.local_addr()?
    );
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            // Without a SIGTERM handler, SIGINT still stops it.
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tonic::transport::Server::builder()
        .add_service(server)
        .serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |conn| {
                    // As driftd does: no Nagle delay on small answers.
                    if let Ok(tcp) = &conn {
                        let _ = tcp.set_nodelay(true);
                    }
                    conn
                },
            ),
            shutdown,
        )
        .await?;
    eprintln!(
        "driftd-loadgen baseline: decoded {} batches, {} records, {} values",
        totals.batches.load(Ordering::Relaxed),
        totals.records.load(Ordering::Relaxed),
        totals.values.load(Ordering::Relaxed),
    );
    Ok(())
}
