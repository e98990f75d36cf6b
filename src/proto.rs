//! Generated protobuf and gRPC types: package `driftd.v1` (re-exported at
//! this module's root) and the Open Inference Protocol messages of package
//! `inference`. Nothing else lives here; only `server::grpc` converts these
//! types into domain types.
#![allow(missing_docs)]

/// Package `driftd.v1`. Nested like the package so that generated
/// cross-package paths (`super::super::inference`) resolve.
pub mod driftd {
    pub mod v1 {
        tonic::include_proto!("driftd.v1");
    }
}

/// The Open Inference Protocol messages (package `inference`).
pub mod inference {
    tonic::include_proto!("inference");
}

pub use driftd::v1::*;

/// Encoded file descriptor set, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("driftd_descriptor");
