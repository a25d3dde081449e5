//! OTLP receivers: gRPC and HTTP front ends that decode, convert and hand batches to the
//! bounded ingest queue, answering as the OTLP specification requires.

pub mod convert;
