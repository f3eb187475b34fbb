//! A raw AMQP peer for tests that publish hand-made requests straight to
//! `<ns>.server`, as any broker user could, and read the replies.

#![allow(dead_code)]

use std::collections::HashMap;

use chat_amqp::topology::{self, Names};
use chat_core::ErrorCode;
use chat_proto::v1 as pb;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use prost::Message as _;

use crate::common::{Namespace, WAIT};

/// A raw AMQP peer: one channel, one exclusive reply queue it consumes.
pub struct RawPeer {
    pub conn: Connection,
    pub ch: Channel,
    pub reply_queue: String,
    replies: lapin::Consumer,
    pub server_queue: String,
}

impl RawPeer {
    pub async fn connect(ns: &Namespace) -> Self {
        let conn = Connection::connect(&ns.url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let reply_queue = q.name().to_string();
        let replies = ch
            .basic_consume(
                reply_queue.as_str().into(),
                "raw".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            conn,
            ch,
            reply_queue,
            replies,
            server_queue: Names::new(&ns.name).unwrap().server_queue(),
        }
    }

    /// Publishes `body` to `<ns>.server` with `props`.
    pub async fn publish(&self, body: &[u8], props: BasicProperties) {
        self.publish_to(&self.server_queue, body, props).await;
    }

    /// Publishes `body` straight into `queue` through the default exchange.
    pub async fn publish_to(&self, queue: &str, body: &[u8], props: BasicProperties) {
        self.ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap();
    }

    /// Publishes `body` to `<ns>.server` with our reply queue, a fresh
    /// correlation ID and the AMQP `type` `kind` (none: no type at all),
    /// and returns the server's reply.
    pub async fn ask(&mut self, body: &[u8], kind: Option<&str>) -> pb::Reply {
        let correlation = uuid::Uuid::new_v4().to_string();
        let mut props = BasicProperties::default()
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(correlation.as_str().into());
        if let Some(k) = kind {
            props = props.with_type(k.into());
        }
        self.publish(body, props).await;
        self.replies(&[&correlation])
            .await
            .remove(&correlation)
            .expect("the reply")
    }

    /// Request properties with our reply queue and `correlation`.
    pub fn props(&self, correlation: &str) -> BasicProperties {
        topology::request_properties(&self.reply_queue, correlation)
    }

    /// Collects replies until every one of `expected` has come.
    pub async fn replies(&mut self, expected: &[&str]) -> HashMap<String, pb::Reply> {
        let mut got = HashMap::new();
        while !expected.iter().all(|c| got.contains_key(*c)) {
            let delivery = tokio::time::timeout(WAIT, self.replies.next())
                .await
                .unwrap_or_else(|_| panic!("replies so far {got:?}, expected {expected:?}"))
                .expect("reply consumer ended")
                .unwrap();
            let correlation = delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default();
            let reply = pb::Reply::decode(delivery.data.as_slice()).expect("a chat.v1.Reply");
            assert!(
                got.insert(correlation.clone(), reply).is_none(),
                "two replies for {correlation}"
            );
        }
        got
    }

    /// Takes `id`'s inbox with an exclusive consumer tagged `id`, as a
    /// client does, and sends `Join` for it: `id` is online through this
    /// raw connection, which (unlike a client) does nothing when its
    /// consumer goes. Returns the consumer, which must be kept.
    pub async fn join_on(&mut self, inbox: &str, id: &str) -> lapin::Consumer {
        let consumer = self
            .ch
            .basic_consume(
                inbox.into(),
                id.into(),
                BasicConsumeOptions {
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let join = pb::request::Body::Join(pb::JoinRequest {
            client_id: id.into(),
        });
        let reply = self.ask(&request(join), None).await;
        assert!(
            matches!(reply.body, Some(pb::reply::Body::Join(_))),
            "{reply:?}"
        );
        consumer
    }

    /// Messages waiting in `queue` (a passive declare).
    pub async fn depth(&self, queue: &str) -> u32 {
        self.ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Closes the connection (its reply queue goes with it).
    pub async fn close(self) {
        let _ = tokio::time::timeout(WAIT, self.conn.close(200, "done".into())).await;
    }
}

pub fn error_of(reply: &pb::Reply) -> (ErrorCode, &str) {
    match &reply.body {
        Some(pb::reply::Body::Error(e)) => (
            ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
            e.message.as_str(),
        ),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// A request acting as the ID its body names (`send.from`, the first
/// `send_batch` send's `from`, `register`, `history` or `join`'s
/// `client_id`), with that ID's test secret, as a well-behaved
/// client would send it; `list_clients` carries no credentials.
pub fn request(body: pb::request::Body) -> Vec<u8> {
    let acting_as = match &body {
        pb::request::Body::Send(s) => Some(s.from.clone()),
        pb::request::Body::SendBatch(b) => b.sends.first().map(|s| s.from.clone()),
        pb::request::Body::Register(r) => Some(r.client_id.clone()),
        pb::request::Body::History(h) => Some(h.client_id.clone()),
        pb::request::Body::Join(j) => Some(j.client_id.clone()),
        pb::request::Body::ListClients(_) => None,
    };
    let auth = acting_as.map(|id| pb::Auth {
        secret: chat_testkit::secret_of(&id).expose().to_owned(),
        client_id: id,
    });
    pb::Request {
        body: Some(body),
        auth,
    }
    .encode_to_vec()
}

pub fn send(from: &str, to: &str, text: &str) -> pb::request::Body {
    pb::request::Body::Send(pb::SendRequest {
        id: uuid::Uuid::now_v7().to_string(),
        from: from.into(),
        to: to.into(),
        text: text.into(),
    })
}
