//! The `chat.v1.Chat` gRPC service over [`ChatServer`], plus health and
//! reflection, served on a listener the caller bound.
//!
//! Receive is server streaming, as in tonic's routeguide example: a spawned
//! task moves the client's mailbox into a bounded `mpsc`, whose closing tells
//! us the client went away (its session then ends and it shows offline).

use std::future::Future;
use std::time::Duration;

use chat_core::ChatServer;
use chat_proto::v1 as pb;
use pb::chat_server::{Chat, ChatServer as ChatService};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::status::to_status;

/// Messages buffered per stream before the server waits for the client
/// (flow control instead of unbounded memory for a slow reader).
const STREAM_BUFFER: usize = 256;
/// HTTP/2 pings find clients that vanished without closing their socket.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The gRPC face of a [`ChatServer`].
#[derive(Clone)]
pub struct GrpcChat {
    server: ChatServer,
}

impl GrpcChat {
    pub fn new(server: ChatServer) -> Self {
        Self { server }
    }
}

#[tonic::async_trait]
impl Chat for GrpcChat {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        let pb::RegisterRequest { client_id } = request.into_inner();
        let created = self.server.register(&client_id).await.map_err(to_status)?;
        Ok(Response::new(pb::RegisterReply { client_id, created }))
    }

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendReply>, Status> {
        let m = self
            .server
            .send(request.into_inner())
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::SendReply {
            id: m.id.to_string(),
            timestamp_ms: m.timestamp_ms,
        }))
    }

    type SubscribeStream = ReceiverStream<Result<pb::ChatMessage, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let pb::SubscribeRequest {
            client_id,
            after_seq,
        } = request.into_inner();
        let mut session = self
            .server
            .connect(&client_id, after_seq)
            .await
            .map_err(to_status)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    batch = session.next_batch() => {
                        let Some(batch) = batch else { return };
                        for m in batch {
                            if tx.send(Ok(m.to_proto())).await.is_err() {
                                return;
                            }
                        }
                    }
                    () = tx.closed() => return,
                }
            }
            // `session` drops here: the client is offline.
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckReply>, Status> {
        let pb::AckRequest {
            client_id,
            up_to_seq,
        } = request.into_inner();
        self.server
            .ack(&client_id, up_to_seq)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::AckReply {}))
    }

    async fn list_clients(
        &self,
        _request: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsReply>, Status> {
        let clients = self.server.list().iter().map(|c| c.to_proto()).collect();
        Ok(Response::new(pb::ListClientsReply { clients }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryReply>, Status> {
        let reply = self
            .server
            .history_reply(&request.into_inner().client_id)
            .map_err(to_status)?;
        Ok(Response::new(reply))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the chat (plus `grpc.health.v1` and reflection) on `listener`
/// until `shutdown` resolves, then ends every stream and drains.
pub async fn run(
    listener: TcpListener,
    server: ChatServer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ChatService<GrpcChat>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(chat_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let chat = ChatService::new(GrpcChat::new(server.clone()));
    let on_shutdown = async move {
        shutdown.await;
        health.set_not_serving::<ChatService<GrpcChat>>().await;
        // Streams end when the chat shuts down; otherwise graceful shutdown
        // would wait for every connected client to leave.
        server.shutdown();
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(chat)
        .serve_with_incoming_shutdown(incoming, on_shutdown)
        .await?;
    Ok(())
}
