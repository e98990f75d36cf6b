//! The client's side of the wire: a gRPC codec that sends messages encoded
//! once in advance, so that the load generator spends its CPU on sending
//! rather than on encoding the same batches again and again.

use std::marker::PhantomData;

use prost::bytes::{BufMut, Bytes};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::Channel,
    Request, Status,
};

use driftd::proto as pb;

/// Sends pre-encoded messages as they are and decodes answers of type `D`.
pub struct RawCodec<D>(PhantomData<D>);

impl<D> Default for RawCodec<D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// Copies pre-encoded bytes into the frame.
pub struct RawEncoder;

/// Decodes one protobuf message of type `D`.
pub struct MessageDecoder<D>(PhantomData<D>);

impl<D: prost::Message + Default + Send + 'static> Codec for RawCodec<D> {
    type Encode = Bytes;
    type Decode = D;
    type Encoder = RawEncoder;
    type Decoder = MessageDecoder<D>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> MessageDecoder<D> {
        MessageDecoder(PhantomData)
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl<D: prost::Message + Default> Decoder for MessageDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable answer: {e}")))
    }
}

/// Streams pre-encoded `IngestRequest`s over one `Ingest` call and returns
/// its summary.
///
/// # Errors
/// The call's status.
pub async fn ingest_stream<S>(channel: Channel, requests: S) -> Result<pb::IngestSummary, Status>
where
    S: tokio_stream::Stream<Item = Bytes> + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    let path = PathAndQuery::from_static("/driftd.v1.Driftd/Ingest");
    let res = grpc
        .client_streaming(
            Request::new(requests),
            path,
            RawCodec::<pb::IngestSummary>::default(),
        )
        .await?;
    Ok(res.into_inner())
}

/// Sends one pre-encoded `IngestRequest` with `IngestBatch`.
///
/// # Errors
/// The call's status.
pub async fn ingest_batch(
    grpc: &mut tonic::client::Grpc<Channel>,
    request: Bytes,
) -> Result<pb::IngestResponse, Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    let path = PathAndQuery::from_static("/driftd.v1.Driftd/IngestBatch");
    let res = grpc
        .unary(
            Request::new(request),
            path,
            RawCodec::<pb::IngestResponse>::default(),
        )
        .await?;
    Ok(res.into_inner())
}
