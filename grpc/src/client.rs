//! [`GrpcClient`]: `chat_core::ChatClient` over one tonic channel.
//!
//! The channel reconnects by itself; on top of it, the receive task re-opens
//! the `Subscribe` stream with backoff after the server goes away, resuming
//! after the last seq it passed on, and the ack task carries cumulative
//! acknowledgements to the server (coalesced: one RPC acknowledges every
//! message shown since the last one).
//!
//! Every RPC carries the client's ID and secret as metadata
//! ([`crate::service::ID_HEADER`], [`crate::service::SECRET_HEADER`]), added
//! by one interceptor ([`Auth`]), so no call can go out without them.

use std::time::Duration;

use chat_core::backoff::Backoff;
use chat_core::client::incoming_channel;
use chat_core::{
    Accepted, AckStream, ChatClient, ClientError, ClientId, ClientInfo, ConnectionState, Delivered,
    ErrorCode, Incoming, IncomingSink, Message, Secret, Sends,
};
use chat_proto::v1 as pb;
use pb::chat_client::ChatClient as RpcClient;
use tonic::Streaming;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::keepalive::Keepalive;
use crate::sends::RpcSends;
use crate::service::{ID_HEADER, SECRET_HEADER};

pub(crate) type Rpc = RpcClient<InterceptedService<Channel, Auth>>;

/// Adds the client's credentials to every request.
#[derive(Clone)]
pub struct Auth {
    id: AsciiMetadataValue,
    secret: AsciiMetadataValue,
}

impl Auth {
    fn new(id: &ClientId, secret: &Secret) -> Result<Self, ClientError> {
        // IDs and secrets are visible ASCII by construction.
        let value = |s: &str| {
            AsciiMetadataValue::try_from(s)
                .map_err(|e| ClientError::Local(format!("cannot put {s:?} in metadata: {e}")))
        };
        let mut secret = value(secret.expose())?;
        secret.set_sensitive(true);
        Ok(Self {
            id: value(id.as_str())?,
            secret,
        })
    }
}

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let m = request.metadata_mut();
        m.insert(ID_HEADER, self.id.clone());
        m.insert(SECRET_HEADER, self.secret.clone());
        Ok(request)
    }
}

use crate::status::from_status;

/// How long a send keeps retrying (with the same message ID, so it is
/// accepted at most once) while the server is unreachable.
pub const SEND_RETRY_WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct GrpcConfig {
    /// Server URL, e.g. `http://127.0.0.1:50051`.
    pub server: String,
    /// Time allowed for one connection attempt.
    pub connect_timeout: Duration,
    /// Pings towards the server, so that a server that went silent (frozen,
    /// or gone without closing the connection) is noticed and the client
    /// reconnects.
    pub keepalive: Keepalive,
    /// Adaptive batching of sends ([`chat_core::send_queue`]): on unless the
    /// environment says `CHAT_BATCHING=off`.
    pub batching: bool,
}

impl GrpcConfig {
    pub fn new(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            connect_timeout: Duration::from_secs(5),
            keepalive: Keepalive::default(),
            batching: chat_core::send_queue::batching_from_env(),
        }
    }

    /// The same configuration with another keepalive.
    pub fn with_keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = keepalive;
        self
    }
}

#[derive(Clone)]
pub struct GrpcClient {
    id: ClientId,
    rpc: Rpc,
    endpoint: String,
    /// Sends, batched with batching on.
    sends: Sends<RpcSends>,
}

impl GrpcClient {
    fn err(&self, status: tonic::Status) -> ClientError {
        from_status(status, &self.endpoint)
    }
}

impl ChatClient for GrpcClient {
    type Config = GrpcConfig;

    async fn connect(
        config: &GrpcConfig,
        id: ClientId,
        secret: Secret,
    ) -> Result<Self, ClientError> {
        let auth = Auth::new(&id, &secret)?;
        let endpoint = Endpoint::from_shared(config.server.clone())
            .map_err(|e| {
                ClientError::Local(format!("invalid server URL {:?}: {e}", config.server))
            })?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(config.keepalive.interval)
            .keep_alive_timeout(config.keepalive.timeout)
            .keep_alive_while_idle(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError::Unavailable {
                endpoint: config.server.clone(),
                reason: error_chain(&e),
            })?;
        let rpc = RpcClient::with_interceptor(channel, auth);
        let carrier = RpcSends {
            rpc: rpc.clone(),
            endpoint: config.server.clone(),
        };
        let sends = Sends::new(carrier, config.batching);
        Ok(Self {
            id,
            rpc,
            endpoint: config.server.clone(),
            sends,
        })
    }

    fn id(&self) -> &ClientId {
        &self.id
    }

    async fn register(&self) -> Result<bool, ClientError> {
        let reply = self
            .rpc
            .clone()
            .register(pb::RegisterRequest {
                client_id: self.id.to_string(),
            })
            .await
            .map_err(|s| self.err(s))?;
        Ok(reply.into_inner().created)
    }

    async fn join_after(&self, after_seq: u64) -> Result<Incoming, ClientError> {
        self.register().await?;
        let stream = self.subscribe(after_seq).await?;
        let (sink, incoming, acks) = incoming_channel(after_seq);
        tokio::spawn(self.clone().receive(stream, sink));
        tokio::spawn(self.clone().acknowledge(acks));
        Ok(incoming)
    }

    async fn send(&self, to: &ClientId, text: &str) -> Result<Accepted, ClientError> {
        self.sends.send(&self.id, to, text).await
    }

    async fn list_clients(&self) -> Result<Vec<ClientInfo>, ClientError> {
        let reply = self
            .rpc
            .clone()
            .list_clients(pb::ListClientsRequest {})
            .await
            .map_err(|s| self.err(s))?;
        reply
            .into_inner()
            .clients
            .into_iter()
            .map(|c| ClientInfo::from_proto(c).map_err(|e| ClientError::Protocol(e.to_string())))
            .collect()
    }

    async fn history(&self) -> Result<Vec<Message>, ClientError> {
        chat_core::client::all_history_pages(|after| async move {
            let reply = self
                .rpc
                .clone()
                .history(pb::HistoryRequest {
                    client_id: self.id.to_string(),
                    after,
                    limit: 0,
                })
                .await
                .map_err(|s| self.err(s))?;
            Ok(reply.into_inner())
        })
        .await
    }
}

impl GrpcClient {
    async fn subscribe(&self, after_seq: u64) -> Result<Streaming<pb::ChatMessage>, ClientError> {
        self.rpc
            .clone()
            .subscribe(pb::SubscribeRequest {
                client_id: self.id.to_string(),
                after_seq,
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.err(s))
    }

    /// Moves the stream into the sink; re-subscribes when it breaks.
    async fn receive(self, mut stream: Streaming<pb::ChatMessage>, mut sink: IncomingSink) {
        let mut backoff = Backoff::new();
        loop {
            let reason = loop {
                let next = tokio::select! {
                    next = stream.message() => next,
                    () = sink.closed() => return,
                };
                match next {
                    Ok(Some(m)) => match Message::from_proto(m) {
                        Ok(m) => {
                            if sink.deliver(m).await == Delivered::Closed {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "dropping a malformed message"),
                    },
                    Ok(None) => break "the server closed the stream".to_owned(),
                    Err(s) => break self.err(s).to_string(),
                }
            };
            if !sink.state(ConnectionState::Reconnecting { reason }).await {
                return;
            }
            stream = loop {
                tokio::select! {
                    () = backoff.wait() => {}
                    () = sink.closed() => return,
                }
                match self.subscribe(sink.last_seq()).await {
                    Ok(s) => break s,
                    // The server has not yet noticed our old stream is gone.
                    Err(e) if e.is_transient() || e.code() == Some(ErrorCode::AlreadyExists) => {
                        tracing::debug!(error = %e, "re-subscribe failed; retrying");
                    }
                    Err(e) => {
                        let _ = sink
                            .state(ConnectionState::Closed {
                                reason: e.to_string(),
                            })
                            .await;
                        return;
                    }
                }
            };
            backoff.reset();
            if !sink.state(ConnectionState::Connected).await {
                return;
            }
        }
    }

    /// Sends cumulative acks, coalescing whatever has queued up meanwhile.
    /// A failed ack is retried with backoff (newer acks cover it); once the
    /// consumer is gone, a few last attempts are made, then it gives up and
    /// the server will simply deliver those messages again next time.
    async fn acknowledge(self, mut acks: AckStream) {
        const LAST_ATTEMPTS: u32 = 5;
        let mut backoff = Backoff::new();
        while let Some(first) = acks.recv().await {
            let mut up_to = first;
            let mut open = true;
            let mut attempts_left = LAST_ATTEMPTS;
            loop {
                while let Some(t) = acks.try_recv() {
                    up_to = up_to.max(t);
                }
                let request = pb::AckRequest {
                    client_id: self.id.to_string(),
                    up_to_seq: up_to,
                };
                match self.rpc.clone().ack(request).await {
                    Ok(_) => {
                        backoff.reset();
                        break;
                    }
                    Err(s) => tracing::debug!(status = %s, "ack failed; retrying"),
                }
                if open {
                    tokio::select! {
                        () = backoff.wait() => {}
                        t = acks.recv() => match t {
                            Some(t) => up_to = up_to.max(t),
                            None => open = false,
                        },
                    }
                } else if attempts_left == 0 {
                    return;
                } else {
                    attempts_left -= 1;
                    backoff.wait().await;
                }
            }
        }
    }
}

/// `e` and its sources, e.g. "transport error: tcp connect error: Connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}
