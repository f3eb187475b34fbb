//! `grpc-bare`: the minimal tonic relay. A unary `Send` goes straight into
//! the recipient's open `Subscribe` stream; nothing is stored.
//!
//! Seqs are assigned and the message queued under one lock, so a stream
//! carries them in order (the client drops anything at or below the last
//! seq it showed). The per-stream queue is unbounded: a ceiling measures
//! the transport, not flow control.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use chat_core::MessageId;
use chat_proto::v1 as pb;
use pb::chat_server::{Chat, ChatServer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

type Stream = mpsc::UnboundedSender<Result<pb::ChatMessage, Status>>;

#[derive(Clone, Default)]
pub struct Relay {
    /// Open streams by client ID, with the last seq given on each.
    streams: Arc<Mutex<HashMap<String, (Stream, u64)>>>,
}

#[tonic::async_trait]
impl Chat for Relay {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        Ok(Response::new(pb::RegisterReply {
            client_id: request.into_inner().client_id,
            created: true,
        }))
    }

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendReply>, Status> {
        self.relay(request.into_inner()).map(Response::new)
    }

    /// The clients' batches, relayed one by one (the same client code runs
    /// against the chat and against this ceiling).
    async fn send_batch(
        &self,
        request: Request<pb::SendBatchRequest>,
    ) -> Result<Response<pb::SendBatchReply>, Status> {
        let outcomes = request
            .into_inner()
            .sends
            .into_iter()
            .map(|r| pb::SendOutcome {
                result: Some(match self.relay(r) {
                    Ok(reply) => pb::send_outcome::Result::Accepted(reply),
                    Err(s) => pb::send_outcome::Result::Error(pb::Error {
                        code: pb::ErrorCode::Unavailable as i32,
                        message: s.message().to_owned(),
                    }),
                }),
            })
            .collect();
        Ok(Response::new(pb::SendBatchReply { outcomes }))
    }

    type SubscribeStream = UnboundedReceiverStream<Result<pb::ChatMessage, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(r.client_id, (tx, r.after_seq));
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn ack(&self, _: Request<pb::AckRequest>) -> Result<Response<pb::AckReply>, Status> {
        Ok(Response::new(pb::AckReply {}))
    }

    async fn list_clients(
        &self,
        _: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsReply>, Status> {
        Err(Status::unimplemented("the bare relay has no client list"))
    }

    async fn history(
        &self,
        _: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryReply>, Status> {
        Err(Status::unimplemented("the bare relay keeps no history"))
    }
}

impl Relay {
    /// Puts `r` into its recipient's stream with the recipient's next seq.
    fn relay(&self, r: pb::SendRequest) -> Result<pb::SendReply, Status> {
        let timestamp_ms = chat_core::message::now_ms();
        let id = if r.id.is_empty() {
            MessageId::generate().to_string()
        } else {
            r.id
        };
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let Some((tx, seq)) = streams.get_mut(&r.to) else {
            return Err(Status::not_found(format!("{} has no open stream", r.to)));
        };
        *seq += 1;
        let m = pb::ChatMessage {
            id: id.clone(),
            from: r.from,
            to: r.to,
            text: r.text,
            timestamp_ms,
            seq: *seq,
        };
        tx.send(Ok(m))
            .map_err(|_| Status::unavailable("recipient's stream closed"))?;
        Ok(pb::SendReply { id, timestamp_ms })
    }
}

/// Serves the relay on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(ChatServer::new(Relay::default()))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
