//! The client side of subcommands that talk to a running daemon
//! (`driftd reference import`).

use crate::{
    domain::{Batch, ModelKey, Role, Values},
    proto as pb,
};

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection to the daemon.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The daemon refused the reference.
    #[error("the daemon refused the reference: {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

/// Streams `batches` as the new reference of `key` to the daemon at `addr`
/// (`http://host:port`).
///
/// # Errors
/// [`Error::Connect`] or the daemon's status.
pub async fn import_reference(
    addr: &str,
    key: &ModelKey,
    batches: Vec<Batch>,
) -> Result<pb::SetReferenceResponse, Error> {
    let mut client = pb::driftd_client::DriftdClient::connect(addr.to_string())
        .await
        .map_err(|source| Error::Connect {
            addr: addr.to_string(),
            source,
        })?
        .max_encoding_message_size(usize::MAX);
    let key = key.clone();
    let stream = tokio_stream::iter(batches.into_iter().map(move |b| pb::SetReferenceRequest {
        batch: Some(to_proto(&key, b)),
    }));
    Ok(client.set_reference(stream).await?.into_inner())
}

fn to_proto(key: &ModelKey, b: Batch) -> pb::RecordBatch {
    pb::RecordBatch {
        model: key.model.clone(),
        version: key.version.clone(),
        columns: b
            .columns
            .into_iter()
            .map(|c| pb::Column {
                name: c.name,
                role: match c.role {
                    Role::Input => pb::ColumnRole::Input as i32,
                    Role::Output => pb::ColumnRole::Output as i32,
                },
                values: Some(match c.values {
                    Values::Numeric(values) => {
                        pb::column::Values::Numeric(pb::NumericValues { values })
                    }
                    Values::Categorical(values) => {
                        pb::column::Values::Categorical(pb::CategoricalValues { values })
                    }
                }),
            })
            .collect(),
        ..Default::default()
    }
}
