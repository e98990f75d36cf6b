//! The network edges: the gRPC service and the HTTP admin server. Both
//! translate between the wire and the engine; neither holds state of its own.

pub mod admin;
pub mod grpc;
pub mod kserve;
