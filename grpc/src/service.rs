//! The `chat.v1.Chat` gRPC service over [`ChatServer`], plus health and
//! reflection, served on a listener the caller bound.
//!
//! Identity: every RPC but `ListClients` carries the metadata
//! [`ID_HEADER`] and [`SECRET_HEADER`]; chat-core checks them
//! (UNAUTHENTICATED when missing or wrong, PERMISSION_DENIED when the body
//! names another ID). The check is a SHA-256 of 32-ish bytes per request.
//!
//! Receive is server streaming, as in tonic's routeguide example: a spawned
//! task moves the client's mailbox into a bounded `mpsc`, whose closing tells
//! us the client went away (its session then ends and it shows offline).

use std::future::Future;

use chat_core::{ChatError, ChatServer, Credentials, Principal, SendCommand};
use chat_proto::v1 as pb;
use pb::chat_server::{Chat, ChatServer as ChatService};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::keepalive::Keepalive;
use crate::status::to_status;

/// Messages buffered per stream before the server waits for the client
/// (flow control instead of unbounded memory for a slow reader).
const STREAM_BUFFER: usize = 256;

/// Metadata key of the client ID a request acts as.
pub const ID_HEADER: &str = "x-chat-id";
/// Metadata key of the secret that proves it.
pub const SECRET_HEADER: &str = "x-chat-secret";

/// The credentials in a request's metadata (empty when absent).
fn credentials<T>(request: &Request<T>) -> Credentials {
    let get = |key| {
        request
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    Credentials::new(get(ID_HEADER), get(SECRET_HEADER))
}

/// The gRPC face of a [`ChatServer`].
#[derive(Clone)]
pub struct GrpcChat {
    server: ChatServer,
}

impl GrpcChat {
    pub fn new(server: ChatServer) -> Self {
        Self { server }
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        self.server
            .authenticate(&credentials(request))
            .map_err(|e| self.refuse(e))
    }

    /// The status that refuses a request with `e`, counted in the metrics.
    fn refuse(&self, e: ChatError) -> Status {
        self.server.metrics().refused(e.code());
        to_status(e)
    }
}

#[tonic::async_trait]
impl Chat for GrpcChat {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        let creds = credentials(&request);
        let pb::RegisterRequest { client_id } = request.into_inner();
        let (_, created) = self
            .server
            .register(&creds, &client_id)
            .await
            .map_err(|e| self.refuse(e))?;
        Ok(Response::new(pb::RegisterReply { client_id, created }))
    }

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendReply>, Status> {
        let principal = self.authenticate(&request)?;
        self.server.metrics().send_batch(1);
        let cmd = SendCommand::parse(request.into_inner(), &self.server.limits())
            .map_err(|e| self.refuse(e))?;
        let m = self
            .server
            .send(&principal, cmd)
            .await
            .map_err(|e| self.refuse(e))?;
        Ok(Response::new(m.to_reply()))
    }

    async fn send_batch(
        &self,
        request: Request<pb::SendBatchRequest>,
    ) -> Result<Response<pb::SendBatchReply>, Status> {
        let principal = self.authenticate(&request)?;
        let batch = self
            .server
            .accept_batch(&principal, request.into_inner().sends)
            .map_err(|e| self.refuse(e))?;
        Ok(Response::new(batch.durable().await.reply()))
    }

    type SubscribeStream = ReceiverStream<Result<pb::ChatMessage, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let creds = credentials(&request);
        let pb::SubscribeRequest {
            client_id,
            after_seq,
        } = request.into_inner();
        let mut session = self
            .server
            .connect(&creds, &client_id, after_seq)
            .await
            .map_err(|e| self.refuse(e))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let metrics = self.server.metrics().clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    batch = session.next_batch() => {
                        let Some(batch) = batch else { return };
                        for m in batch {
                            if tx.send(Ok(m.to_proto())).await.is_err() {
                                return;
                            }
                            metrics.delivered(1);
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
        let principal = self.authenticate(&request)?;
        let pb::AckRequest {
            client_id,
            up_to_seq,
        } = request.into_inner();
        self.server
            .ack(&principal, &client_id, up_to_seq)
            .await
            .map_err(|e| self.refuse(e))?;
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
        let principal = self.authenticate(&request)?;
        let pb::HistoryRequest {
            client_id,
            after,
            limit,
        } = request.into_inner();
        let reply = self
            .server
            .history_page(&principal, &client_id, after, limit)
            .await
            .map_err(|e| self.refuse(e))?;
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
/// until `shutdown` resolves, then ends every stream and drains. Uses the
/// default [`Keepalive`]; see [`run_with`].
pub async fn run(
    listener: TcpListener,
    server: ChatServer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    run_with(listener, server, Keepalive::default(), shutdown).await
}

/// [`run`] with the given keepalive: a client that stops answering pings
/// (frozen, or gone without closing its socket) loses its connection, and
/// with it its stream and its online status, within about
/// `keepalive.interval + keepalive.timeout`.
pub async fn run_with(
    listener: TcpListener,
    server: ChatServer,
    keepalive: Keepalive,
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
        .http2_keepalive_interval(Some(keepalive.interval))
        .http2_keepalive_timeout(Some(keepalive.timeout))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(chat)
        .serve_with_incoming_shutdown(incoming, on_shutdown)
        .await?;
    Ok(())
}
