//! The forwarder: moves chat-core's outboxes into the client queues.
//!
//! Each round takes per-recipient batches from chat-core
//! ([`ChatServer::next_round`](chat_core::ChatServer::next_round): only
//! recipients with something new, each after what was already published),
//! publishes them persistent and `mandatory` to the recipients' durable
//! queues, waits for the publisher confirms, and then records one
//! cumulative ack per recipient
//! ([`ChatServer::forwarded`](chat_core::ChatServer::forwarded)); those
//! acks reach the journal together (its writer commits them as one batch).
//! A message the broker refuses (returned or nacked) is published again,
//! from that message on, after a backoff.
//!
//! With batching (`--batching on`, the default), a recipient's batch goes
//! out as few `ChatMessageBatch` deliveries; a batch of one is a plain
//! `ChatMessage`. Batches only form from what already waits, so a message
//! that waits alone is never held back.

use std::sync::Arc;

use chat_core::backoff::Backoff;
use chat_core::{ClientId, Message, Outgoing};
use chat_proto::v1 as pb;
use lapin::Confirmation;
use lapin::PublisherConfirm;
use lapin::options::BasicPublishOptions;
use prost::Message as _;

use super::generation::Generation;
use crate::error::AmqpError;
use crate::{MAX_DELIVERY_BATCH, MAX_DELIVERY_BATCH_BYTES, topology};

/// Most messages the forwarder publishes before it waits for their confirms.
const FORWARD_BATCH: usize = 1024;

/// Runs for one generation; any broker error ends it. Whatever was handed
/// out on an earlier connection and not confirmed is published again.
pub(super) async fn forward(g: Arc<Generation>) {
    if let Err(e) = forward_loop(&g).await {
        g.broken.trigger(e);
    }
}

async fn forward_loop(g: &Generation) -> Result<(), AmqpError> {
    let wake = g.server.start_forwarding();
    let mut retry = Backoff::new();
    loop {
        let round = match g.server.next_round(FORWARD_BATCH) {
            Ok(round) => round,
            Err(e) => {
                // A spilled message could not be read back from log.txt;
                // chat-core hands it out again.
                tracing::error!(error = %e, "cannot read an undelivered message back");
                retry.wait().await;
                continue;
            }
        };
        if round.is_empty() {
            wake.notified().await;
            continue;
        }
        let mut published = Vec::with_capacity(round.len());
        for batch in &round {
            published.push(publish(g, batch).await?);
        }
        let mut refused = false;
        let mut acks = Vec::with_capacity(round.len());
        for (batch, confirms) in round.iter().zip(published) {
            let stored = confirmed(g, batch, confirms).await?;
            refused |= stored < batch.messages.len();
            if let Some(last) = stored.checked_sub(1) {
                acks.push((&batch.to, batch.messages[last].seq, stored));
            }
        }
        record(g, &acks).await;
        if refused {
            retry.wait().await;
        } else {
            retry.reset();
        }
    }
}

/// One delivery published, and how many messages it holds.
struct Published {
    messages: usize,
    confirm: PublisherConfirm,
}

/// Publishes one recipient's batch, in seq order, to its queue: several
/// messages per delivery with batching, else one each.
async fn publish(g: &Generation, batch: &Outgoing) -> Result<Vec<Published>, AmqpError> {
    g.ensure_client_queue(&batch.to).await?;
    let mut published = Vec::new();
    for chunk in deliveries(&batch.messages, g.batching) {
        published.push(Published {
            messages: chunk.len(),
            confirm: publish_delivery(g, chunk).await?,
        });
    }
    Ok(published)
}

/// Splits a recipient's messages into deliveries: with batching, as many
/// as fit [`MAX_DELIVERY_BATCH`] and [`MAX_DELIVERY_BATCH_BYTES`]; else one
/// message each.
fn deliveries(messages: &[Arc<Message>], batching: bool) -> Vec<&[Arc<Message>]> {
    if !batching {
        return messages.chunks(1).collect();
    }
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, m) in messages.iter().enumerate() {
        let full =
            i - start == MAX_DELIVERY_BATCH || bytes + m.text.len() > MAX_DELIVERY_BATCH_BYTES;
        if i > start && full {
            out.push(&messages[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += m.text.len();
    }
    if start < messages.len() {
        out.push(&messages[start..]);
    }
    out
}

async fn publish_delivery(
    g: &Generation,
    chunk: &[Arc<Message>],
) -> Result<PublisherConfirm, AmqpError> {
    let first = &chunk[0];
    let (body, properties) = match chunk {
        [m] => (
            m.to_proto().encode_to_vec(),
            topology::message_properties(&m.id.to_string(), m.timestamp_ms),
        ),
        _ => (
            pb::ChatMessageBatch {
                messages: chunk.iter().map(|m| m.to_proto()).collect(),
            }
            .encode_to_vec(),
            topology::batch_properties(&first.id.to_string(), first.timestamp_ms),
        ),
    };
    let confirm = g
        .publish
        .basic_publish(
            g.names.deliver_exchange().into(),
            first.to.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            properties,
        )
        .await?;
    Ok(confirm)
}

/// Waits for a batch's confirms and returns how many messages, from its
/// start, the broker stored. From the first one it did not store on, the
/// recipient's messages are handed out again (its queue is declared again
/// first, in case it was deleted).
async fn confirmed(
    g: &Generation,
    batch: &Outgoing,
    published: Vec<Published>,
) -> Result<usize, AmqpError> {
    let mut stored = 0;
    let mut refused = false;
    for p in published {
        // Every confirm is awaited, even after a refusal: lapin keeps the
        // ones dropped unawaited.
        let why = refusal(p.confirm.await?);
        match why {
            None if !refused => stored += p.messages,
            None => {}
            Some(why) if !refused => {
                let m = &batch.messages[stored];
                tracing::warn!(to = %m.to, seq = m.seq, "message not stored by the broker ({why}); will publish it again");
                g.server.rewind(&batch.to, m.seq - 1);
                g.declared().remove(&batch.to);
                refused = true;
            }
            Some(_) => {}
        }
    }
    Ok(stored)
}

/// Why the broker did not store a message, if it did not.
fn refusal(confirmation: Confirmation) -> Option<String> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => None,
        Confirmation::Ack(Some(returned)) => Some(format!(
            "returned by the broker: {}",
            returned.reply_text.as_str()
        )),
        Confirmation::Nack(_) => Some("refused (nack) by the broker".to_owned()),
    }
}

/// One cumulative ack per recipient, all queued to the journal before any
/// is awaited, so that they are written together.
async fn record(g: &Generation, acks: &[(&ClientId, u64, usize)]) {
    let results =
        futures::future::join_all(acks.iter().map(|(to, seq, _)| g.server.forwarded(to, *seq)))
            .await;
    for ((to, _, count), result) in acks.iter().zip(results) {
        match result {
            Ok(()) => g.server.metrics().delivered(*count as u64),
            Err(e) => tracing::error!(to = %to, error = %e, "cannot record a delivery"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::MessageId;

    fn messages(n: usize, text_len: usize) -> Vec<Arc<Message>> {
        (1..=n as u64)
            .map(|seq| {
                Arc::new(Message {
                    id: MessageId::generate(),
                    from: ClientId::parse("alice").unwrap(),
                    to: ClientId::parse("bob").unwrap(),
                    text: "x".repeat(text_len),
                    timestamp_ms: 0,
                    seq,
                })
            })
            .collect()
    }

    fn sizes(chunks: &[&[Arc<Message>]]) -> Vec<usize> {
        chunks.iter().map(|c| c.len()).collect()
    }

    #[test]
    fn deliveries_fill_up_to_the_count_and_byte_limits_in_order() {
        let ms = messages(2 * MAX_DELIVERY_BATCH + 2, 10);
        let chunks = deliveries(&ms, true);
        assert_eq!(sizes(&chunks), [MAX_DELIVERY_BATCH, MAX_DELIVERY_BATCH, 2]);
        let seqs: Vec<u64> = chunks
            .iter()
            .flat_map(|c| c.iter().map(|m| m.seq))
            .collect();
        assert_eq!(seqs, (1..=ms.len() as u64).collect::<Vec<_>>());

        // Texts of a third of the byte limit: three fit, the fourth starts
        // the next delivery.
        let ms = messages(7, MAX_DELIVERY_BATCH_BYTES / 3);
        assert_eq!(sizes(&deliveries(&ms, true)), [3, 3, 1]);
        // One text over the limit still goes out, alone.
        let ms = messages(2, MAX_DELIVERY_BATCH_BYTES + 1);
        assert_eq!(sizes(&deliveries(&ms, true)), [1, 1]);
        assert_eq!(sizes(&deliveries(&messages(1, 5), true)), [1]);
    }

    #[test]
    fn without_batching_each_message_is_its_own_delivery() {
        assert_eq!(sizes(&deliveries(&messages(5, 10), false)), [1; 5]);
    }
}
