//! Fixtures of the gRPC tests: the gRPC [`Stack`] (a real `grpc-server` on
//! 127.0.0.1:0) that the shared scenarios and the gRPC-only tests run
//! against, and a raw gRPC caller that sends hand-made bytes as a request
//! body.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use chat_grpc::{GrpcClient, GrpcConfig, Keepalive};
use chat_testkit::{Env, Stack};
use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Status, Streaming};

/// The gRPC stack: a `grpc-server` on 127.0.0.1:0 whose port is read from
/// its "listening on" log line and kept for restarts; it is ready when its
/// health service answers SERVING.
pub struct Grpc {
    pub addr: Mutex<Option<SocketAddr>>,
}

impl Grpc {
    pub fn addr(&self) -> SocketAddr {
        self.addr.lock().unwrap().expect("server started")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }
}

/// How long one readiness probe may wait for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Stack for Grpc {
    type Client = GrpcClient;

    async fn new() -> Self {
        Self {
            addr: Mutex::new(None),
        }
    }

    fn server_bin(&self) -> PathBuf {
        env!("CARGO_BIN_EXE_grpc-server").into()
    }

    fn server_args(&self) -> Vec<String> {
        let listen = self
            .addr
            .lock()
            .unwrap()
            .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        vec!["--listen".into(), listen]
    }

    /// The port comes from the log line: the server binds port 0 itself,
    /// so no other process can take the port between choosing and binding.
    fn server_log(&self, line: &str) {
        if let Some(addr) = line.split("listening on ").nth(1) {
            let addr: SocketAddr = addr.trim().parse().expect("listen address");
            *self.addr.lock().unwrap() = Some(addr);
        }
    }

    /// The standard gRPC health check (what `grpc-server health` asks).
    async fn probe(&self) -> Result<(), String> {
        let Some(addr) = *self.addr.lock().unwrap() else {
            return Err("the server has not said where it listens yet".into());
        };
        chat_grpc::health::check(&format!("http://{addr}"), PROBE_TIMEOUT).await
    }

    fn client_bin(&self) -> PathBuf {
        env!("CARGO_BIN_EXE_grpc-client").into()
    }

    fn client_args(&self) -> Vec<String> {
        vec!["--server".into(), self.url()]
    }

    fn client_config(&self) -> GrpcConfig {
        GrpcConfig::new(self.url())
    }

    fn client_config_batching(&self, batching: bool) -> GrpcConfig {
        GrpcConfig {
            batching,
            ..self.client_config()
        }
    }

    fn client_upstream(&self) -> String {
        self.addr().to_string()
    }

    fn client_config_via(&self, via: SocketAddr, liveness: Duration) -> GrpcConfig {
        GrpcConfig::new(format!("http://{via}")).with_keepalive(Keepalive {
            interval: liveness,
            timeout: liveness,
        })
    }

    fn liveness_env(liveness: Duration) -> Vec<(String, String)> {
        let secs = liveness.as_secs().max(1).to_string();
        vec![
            ("CHAT_KEEPALIVE_INTERVAL".into(), secs.clone()),
            ("CHAT_KEEPALIVE_TIMEOUT".into(), secs),
        ]
    }
}

/// A codec that sends and receives message bodies as plain bytes, so a
/// test can put anything inside a well-formed gRPC frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

#[derive(Debug)]
pub struct RawEncoder;

#[derive(Debug)]
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Calls `/chat.v1.Chat/<method>` with `body` as the request message.
pub async fn raw_unary(env: &Env<Grpc>, method: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = raw_channel(env).await;
    let path = PathAndQuery::try_from(format!("/chat.v1.Chat/{method}")).unwrap();
    grpc.unary(as_carol(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// Calls the server-streaming `/chat.v1.Chat/<method>` with `body`.
pub async fn raw_streaming(
    env: &Env<Grpc>,
    method: &str,
    body: Vec<u8>,
) -> Result<Streaming<Vec<u8>>, Status> {
    let mut grpc = raw_channel(env).await;
    let path = PathAndQuery::try_from(format!("/chat.v1.Chat/{method}")).unwrap();
    grpc.server_streaming(as_carol(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// `body` with carol's credentials, so that what the server answers is
/// about the body, not about a missing identity.
fn as_carol(body: Vec<u8>) -> tonic::Request<Vec<u8>> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert(chat_grpc::service::ID_HEADER, "carol".parse().unwrap());
    let secret = chat_testkit::secret_of("carol");
    r.metadata_mut().insert(
        chat_grpc::service::SECRET_HEADER,
        secret.expose().parse().unwrap(),
    );
    r
}

async fn raw_channel(env: &Env<Grpc>) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(env.stack.url())
        .unwrap()
        .connect()
        .await
        .expect("raw gRPC connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    grpc
}
