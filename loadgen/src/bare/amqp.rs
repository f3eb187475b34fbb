//! `amqp-bare`: the broker relay with the chat's hops and none of its logic.
//!
//! A client's request (published persistent, confirmed) waits in the durable
//! `<ns>.server` queue; this relay consumes it, republishes the message
//! persistent and confirmed to the recipient's durable queue, answers the
//! sender, and acknowledges the request when the broker confirms. The
//! recipient consumes with manual acks. Same names and declarations as the
//! chat (`chat_amqp::topology`), so the unchanged `AmqpClient` drives it.
//!
//! Order and concurrency: a recipient must see its seqs in order (it drops
//! anything at or below the last one it showed), so seqs are assigned in
//! delivery order and each recipient is served by one of `LANES` tasks,
//! which publish in order; different recipients proceed in parallel, as the
//! chat's handlers do. A `send_batch` request (the clients' adaptive
//! batching) is relayed message by message, through the lanes of its
//! recipients, and answered with one outcome per send.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chat_amqp::AmqpConfig;
use chat_amqp::topology::{self, Names};
use chat_core::{ClientId, MessageId};
use chat_proto::v1 as pb;
use futures::{FutureExt, StreamExt};
use lapin::Acker;
use lapin::PublisherConfirm;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use prost::Message as _;
use tokio::sync::mpsc;

/// Relay tasks; a recipient always goes to the same one.
const LANES: usize = 16;

/// The sends of one request that go through one lane, in order.
struct Job {
    messages: Vec<pb::ChatMessage>,
    request: Arc<Request>,
}

/// A request (a `send` or a `send_batch`) being relayed: answered once
/// every lane it went to has published its part, acknowledged once the
/// broker has confirmed them all.
struct Request {
    reply_to: Option<ShortString>,
    correlation: Option<ShortString>,
    reply: pb::reply::Body,
    acker: Acker,
    /// Lanes that have not published their part yet.
    parts: AtomicUsize,
    confirms: Mutex<Vec<PublisherConfirm>>,
}

impl Request {
    fn new(
        reply_to: Option<ShortString>,
        correlation: Option<ShortString>,
        reply: pb::reply::Body,
        acker: Acker,
    ) -> Self {
        Self {
            reply_to,
            correlation,
            reply,
            acker,
            parts: AtomicUsize::new(0),
            confirms: Mutex::new(Vec::new()),
        }
    }
}

/// Serves until `shutdown` or the first broker error (a ceiling does not
/// ride out failures; the run is simply invalid then).
pub async fn run(config: AmqpConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let names = config.names()?;
    let conn = config
        .brokers()
        .connect("loadgen amqp-bare relay", chat_amqp::deadline::op_timeout())
        .await?
        .conn;
    let (mut intake, mut requests) = Intake::open(&conn, names).await?;
    tracing::info!(
        namespace = intake.names.namespace(),
        "amqp-bare relay serving"
    );
    let mut shutdown = pin!(shutdown.fuse());
    loop {
        let delivery = tokio::select! {
            () = &mut shutdown => break,
            d = requests.next() => match d {
                Some(d) => d?,
                None => break,
            },
        };
        intake.take(delivery).await?;
    }
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        conn.close(200, "bye".into()),
    )
    .await;
    Ok(())
}

/// The relay's side of the server queue: takes each request, relays its
/// sends through the lanes and answers the rest itself.
struct Intake {
    names: Names,
    /// Declares the recipients' queues.
    admin: Channel,
    /// Publishes forwards and replies, with confirms.
    publish: Channel,
    lanes: Vec<mpsc::UnboundedSender<Job>>,
    /// The last seq given to each recipient.
    seqs: HashMap<String, u64>,
}

impl Intake {
    /// Declares the server side of the namespace, opens the relay's
    /// channels, starts the lanes and consumes the server queue (the
    /// consumer keeps its channel open).
    async fn open(conn: &lapin::Connection, names: Names) -> anyhow::Result<(Self, Consumer)> {
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
        let requests = consume
            .basic_consume(
                names.server_queue().into(),
                "amqp-bare".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(lane(rx, publish.clone(), names.clone()));
                tx
            })
            .collect();
        let intake = Self {
            names,
            admin,
            publish,
            lanes,
            seqs: HashMap::new(),
        };
        Ok((intake, requests))
    }

    /// Handles one request: sends go to their lanes (which answer and
    /// acknowledge it); a register or join is answered and acknowledged
    /// here, anything else refused.
    async fn take(&mut self, delivery: Delivery) -> anyhow::Result<()> {
        let request = pb::Request::decode(delivery.data.as_slice())?;
        let reply_to = delivery.properties.reply_to().clone();
        let correlation = delivery.properties.correlation_id().clone();
        let reply = match request.body {
            Some(pb::request::Body::Send(s)) => {
                let message = assign(&mut self.seqs, s);
                let reply = pb::reply::Body::Send(reply_of(&message));
                let request = Request::new(reply_to, correlation, reply, delivery.acker);
                return dispatch(&self.lanes, vec![message], request);
            }
            Some(pb::request::Body::SendBatch(b)) => {
                let messages: Vec<_> = b
                    .sends
                    .into_iter()
                    .map(|s| assign(&mut self.seqs, s))
                    .collect();
                let outcomes = messages
                    .iter()
                    .map(|m| pb::SendOutcome {
                        result: Some(pb::send_outcome::Result::Accepted(reply_of(m))),
                    })
                    .collect();
                let reply = pb::reply::Body::SendBatch(pb::SendBatchReply { outcomes });
                let request = Request::new(reply_to, correlation, reply, delivery.acker);
                return dispatch(&self.lanes, messages, request);
            }
            Some(pb::request::Body::Register(r)) => {
                let id = ClientId::parse(&r.client_id)?;
                topology::declare_client_queue(&self.admin, &self.names, &id).await?;
                pb::reply::Body::Register(pb::RegisterReply {
                    client_id: r.client_id,
                    created: true,
                })
            }
            // Presence is chat logic: a join is answered and nothing kept.
            Some(pb::request::Body::Join(_)) => pb::reply::Body::Join(pb::JoinReply {}),
            _ => pb::reply::Body::Error(pb::Error {
                code: pb::ErrorCode::InvalidArgument as i32,
                message: "the bare relay only registers, joins and relays".into(),
            }),
        };
        answer(&self.publish, reply_to, correlation.as_ref(), reply).await?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }
}

fn lane_of(recipient: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    recipient.hash(&mut h);
    (h.finish() % LANES as u64) as usize
}

/// The chat message of a send, with the recipient's next seq (assigned in
/// delivery order).
fn assign(seqs: &mut HashMap<String, u64>, s: pb::SendRequest) -> pb::ChatMessage {
    let seq = seqs.entry(s.to.clone()).or_insert(0);
    *seq += 1;
    pb::ChatMessage {
        id: if s.id.is_empty() {
            MessageId::generate().to_string()
        } else {
            s.id
        },
        from: s.from,
        to: s.to,
        text: s.text,
        timestamp_ms: chat_core::message::now_ms(),
        seq: *seq,
    }
}

fn reply_of(m: &pb::ChatMessage) -> pb::SendReply {
    pb::SendReply {
        id: m.id.clone(),
        timestamp_ms: m.timestamp_ms,
    }
}

/// Hands a request's messages to their recipients' lanes, in order.
fn dispatch(
    lanes: &[mpsc::UnboundedSender<Job>],
    messages: Vec<pb::ChatMessage>,
    mut request: Request,
) -> anyhow::Result<()> {
    let mut parts: Vec<(usize, Vec<pb::ChatMessage>)> = Vec::new();
    for m in messages {
        let lane = lane_of(&m.to);
        match parts.iter_mut().find(|(l, _)| *l == lane) {
            Some((_, part)) => part.push(m),
            None => parts.push((lane, vec![m])),
        }
    }
    request.parts = AtomicUsize::new(parts.len());
    let request = Arc::new(request);
    for (lane, messages) in parts {
        let job = Job {
            messages,
            request: request.clone(),
        };
        if lanes[lane].send(job).is_err() {
            anyhow::bail!("a relay lane stopped (see its error above)");
        }
    }
    Ok(())
}

/// Relays the jobs of its recipients in order: forward, answer, and ack the
/// request once the broker confirms the forward.
async fn lane(mut jobs: mpsc::UnboundedReceiver<Job>, publish: Channel, names: Names) {
    while let Some(job) = jobs.recv().await {
        if let Err(e) = relay(&publish, &names, job).await {
            tracing::error!("amqp-bare relay lane stopped: {e}");
            return;
        }
    }
}

async fn relay(publish: &Channel, names: &Names, job: Job) -> anyhow::Result<()> {
    let mut confirms = Vec::with_capacity(job.messages.len());
    for m in &job.messages {
        let forwarded = publish
            .basic_publish(
                names.deliver_exchange().into(),
                m.to.as_str().into(),
                BasicPublishOptions::default(),
                &m.encode_to_vec(),
                topology::message_properties(&m.id, m.timestamp_ms),
            )
            .await?;
        confirms.push(forwarded);
    }
    let request = job.request;
    lock(&request.confirms).extend(confirms);
    if request.parts.fetch_sub(1, Ordering::AcqRel) != 1 {
        return Ok(());
    }
    // The last part: every message of the request is published.
    answer(
        publish,
        request.reply_to.clone(),
        request.correlation.as_ref(),
        request.reply.clone(),
    )
    .await?;
    let confirms = std::mem::take(&mut *lock(&request.confirms));
    tokio::spawn(async move {
        if futures::future::try_join_all(confirms).await.is_ok() {
            let _ = request.acker.ack(BasicAckOptions::default()).await;
        }
    });
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Publishes a reply; its confirm is not awaited, as in the chat.
async fn answer(
    publish: &Channel,
    reply_to: Option<ShortString>,
    correlation: Option<&ShortString>,
    body: pb::reply::Body,
) -> anyhow::Result<()> {
    if let Some(reply_to) = reply_to {
        drop(
            publish
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &pb::Reply { body: Some(body) }.encode_to_vec(),
                    topology::reply_properties(correlation),
                )
                .await?,
        );
    }
    Ok(())
}
