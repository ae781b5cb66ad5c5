//! gRPC server reflection (`grpc.reflection.v1`): lets `grpcurl` and other generic clients
//! list and call `lurk.tls13.v1.CryptoService` without the .proto file. It serves the
//! descriptor set lurk-proto compiled, nothing else.

use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

use crate::server::ServerError;

/// The reflection service for the router (server.rs).
pub fn service() -> Result<ServerReflectionServer<impl ServerReflection>, ServerError> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(lurk_proto::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Config(format!("gRPC reflection: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_descriptor_set_builds_a_reflection_service() {
        super::service().expect("lurk-proto's descriptor set");
    }
}
