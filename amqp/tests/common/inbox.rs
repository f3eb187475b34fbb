//! A client's inbox filled straight from the test, as the server would
//! publish into it: the tests choose the batches and the seqs.

use chat_amqp::topology::{TYPE_MESSAGE, TYPE_MESSAGE_BATCH};
use chat_proto::v1 as pb;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use prost::Message as _;

use super::amqp_url;

/// A chat message from alice to bob with text `t<seq>`.
pub fn message(seq: u64) -> pb::ChatMessage {
    pb::ChatMessage {
        id: chat_core::MessageId::generate().to_string(),
        from: "alice".into(),
        to: "bob".into(),
        text: format!("t{seq}"),
        timestamp_ms: 1,
        seq,
    }
}

/// A publisher straight into one queue of the broker.
pub struct Queue {
    conn: Connection,
    ch: Channel,
    name: String,
}

impl Queue {
    pub async fn open(name: String) -> Self {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        Self { conn, ch, name }
    }

    pub async fn publish(&self, kind: &str, body: Vec<u8>) {
        self.ch
            .basic_publish(
                "".into(),
                self.name.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_type(kind.into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    pub async fn one(&self, seq: u64) {
        self.publish(TYPE_MESSAGE, message(seq).encode_to_vec())
            .await;
    }

    pub async fn batch(&self, seqs: std::ops::RangeInclusive<u64>) {
        let batch = pb::ChatMessageBatch {
            messages: seqs.map(message).collect(),
        };
        self.publish(TYPE_MESSAGE_BATCH, batch.encode_to_vec())
            .await;
    }

    /// Takes the next ready message, if any (`basic.get`, no ack).
    pub async fn get(&self) -> Option<lapin::message::BasicGetMessage> {
        self.ch
            .basic_get(
                self.name.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
    }

    /// Messages ready in the queue (unacknowledged ones are not counted).
    pub async fn ready(&self) -> u32 {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        self.ch
            .queue_declare(self.name.as_str().into(), options, FieldTable::default())
            .await
            .unwrap()
            .message_count()
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "done".into()).await;
    }
}
