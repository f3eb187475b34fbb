//! `amqp-bare`: the broker relay with the chat's hops and none of its logic.
//!
//! A client's request (published persistent, confirmed) waits in the durable
//! `<ns>.server` queue; this relay consumes it, answers at once (as the chat
//! answers once the message is logged), republishes the message persistent
//! and confirmed to the recipient's durable queue, and acknowledges the
//! request when the broker confirms. The recipient consumes with manual acks.
//! Same names and declarations as the chat (`chat_amqp::topology`), so the
//! unchanged `AmqpClient` drives it.
//!
//! Publishing happens in delivery order from the consumer loop, so each
//! recipient sees its seqs in order; only the confirm waits run apart.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;

use chat_amqp::AmqpConfig;
use chat_amqp::topology::{self, Names};
use chat_core::{ClientId, MessageId};
use chat_proto::v1 as pb;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use prost::Message as _;

/// Serves until `shutdown` or the first broker error (a ceiling does not
/// ride out failures; the run is simply invalid then).
pub async fn run(config: AmqpConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let names = Names::new(&config.namespace)?;
    let conn = Connection::connect(
        &config.url,
        ConnectionProperties::default().with_connection_name("loadgen amqp-bare relay".into()),
    )
    .await?;
    let admin = conn.create_channel().await?;
    topology::declare_server_side(&admin, &names).await?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consume = conn.create_channel().await?;
    consume
        .basic_qos(topology::SERVER_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut requests = consume
        .basic_consume(
            names.server_queue().into(),
            "amqp-bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(namespace = names.namespace(), "amqp-bare relay serving");
    let mut seqs: HashMap<String, u64> = HashMap::new();
    let mut shutdown = pin!(shutdown.fuse());
    loop {
        let delivery = tokio::select! {
            () = &mut shutdown => break,
            d = requests.next() => match d {
                Some(d) => d?,
                None => break,
            },
        };
        let request = pb::Request::decode(delivery.data.as_slice())?;
        let reply_to = delivery.properties.reply_to().clone();
        let correlation = delivery.properties.correlation_id().clone();
        // Sends are acknowledged once forwarded; everything else at once.
        let is_send = matches!(request.body, Some(pb::request::Body::Send(_)));
        let reply = match request.body {
            Some(pb::request::Body::Register(r)) => {
                let id = ClientId::parse(&r.client_id)?;
                topology::declare_client_queue(&admin, &names, &id).await?;
                pb::reply::Body::Register(pb::RegisterReply {
                    client_id: r.client_id,
                    created: true,
                })
            }
            Some(pb::request::Body::Send(s)) => {
                let seq = seqs.entry(s.to.clone()).or_insert(0);
                *seq += 1;
                let timestamp_ms = chat_core::message::now_ms();
                let id = if s.id.is_empty() {
                    MessageId::generate().to_string()
                } else {
                    s.id
                };
                let m = pb::ChatMessage {
                    id: id.clone(),
                    from: s.from,
                    to: s.to,
                    text: s.text,
                    timestamp_ms,
                    seq: *seq,
                };
                let forwarded = publish
                    .basic_publish(
                        names.deliver_exchange().into(),
                        m.to.as_str().into(),
                        BasicPublishOptions::default(),
                        &m.encode_to_vec(),
                        topology::message_properties(&id, timestamp_ms),
                    )
                    .await?;
                let acker = delivery.acker.clone();
                tokio::spawn(async move {
                    if forwarded.await.is_ok() {
                        let _ = acker.ack(BasicAckOptions::default()).await;
                    }
                });
                pb::reply::Body::Send(pb::SendReply { id, timestamp_ms })
            }
            _ => pb::reply::Body::Error(pb::Error {
                code: pb::ErrorCode::InvalidArgument as i32,
                message: "the bare relay only registers and relays".into(),
            }),
        };
        if let Some(reply_to) = reply_to {
            // The reply's confirm is not awaited, as in the chat.
            drop(
                publish
                    .basic_publish(
                        "".into(),
                        reply_to,
                        BasicPublishOptions::default(),
                        &pb::Reply { body: Some(reply) }.encode_to_vec(),
                        topology::reply_properties(correlation.as_ref()),
                    )
                    .await?,
            );
        }
        if !is_send {
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
    }
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        conn.close(200, "bye".into()),
    )
    .await;
    Ok(())
}
