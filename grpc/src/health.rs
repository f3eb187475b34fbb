//! `grpc-server health`: asks a running server's standard
//! `grpc.health.v1.Health` service whether the chat is serving. Used as the
//! container healthcheck, so it must fail fast and say why.

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The service name the chat registers its health under.
pub const SERVICE: &str = "chat.v1.Chat";

/// Ok when `url` answers SERVING for the chat service within `timeout`.
pub async fn check(url: &str, timeout: Duration) -> Result<(), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("invalid server URL {url:?}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .map_err(|s| format!("health check failed: {}", s.message()))?;
    match reply.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("server at {url} is {}", other.as_str_name())),
    }
}
