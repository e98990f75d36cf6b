//! Generated protobuf and gRPC types of package `driftd.v1`. Nothing else
//! lives here; only `server::grpc` converts these types into domain types.
#![allow(missing_docs)]

tonic::include_proto!("driftd.v1");

/// Encoded file descriptor set, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("driftd_descriptor");
