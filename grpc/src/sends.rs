//! How the gRPC client carries sends: `Send` and `SendBatch` calls, each
//! retried on transient failures. The adaptive batching itself (when a
//! `SendBatch` forms) is chat-core's [`chat_core::send_queue`], the same
//! on both transports.

use std::future::Future;

use chat_core::ClientError;
use chat_core::backoff::Backoff;
use chat_core::send_queue::{SendCarrier, SendOutcome};
use chat_proto::v1 as pb;

use crate::client::{Rpc, SEND_RETRY_WINDOW};
use crate::status::from_status;

/// The client's calls for sends, to one server.
#[derive(Clone)]
pub(crate) struct RpcSends {
    pub rpc: Rpc,
    pub endpoint: String,
}

impl SendCarrier for RpcSends {
    async fn send_one(&self, request: pb::SendRequest) -> SendOutcome {
        retrying(&self.endpoint, || {
            let mut rpc = self.rpc.clone();
            let request = request.clone();
            async move { rpc.send(request).await }
        })
        .await
    }

    async fn send_batch(
        &self,
        batch: pb::SendBatchRequest,
    ) -> Result<pb::SendBatchReply, ClientError> {
        retrying(&self.endpoint, || {
            let mut rpc = self.rpc.clone();
            let batch = batch.clone();
            async move { rpc.send_batch(batch).await }
        })
        .await
    }
}

/// Makes a call, retrying transient failures with backoff for up to
/// [`SEND_RETRY_WINDOW`] (the same message IDs each time).
async fn retrying<T, F, Fut>(endpoint: &str, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let give_up = tokio::time::Instant::now() + SEND_RETRY_WINDOW;
    let mut backoff = Backoff::new();
    loop {
        match call().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) => {
                let e = from_status(s, endpoint);
                if !e.is_transient() || tokio::time::Instant::now() >= give_up {
                    return Err(e);
                }
                backoff.wait().await;
            }
        }
    }
}
