//! Drives N synthetic clients through [`ChatClient`], the trait the CLIs
//! use, so loadgen measures exactly the code users run.
//!
//! One task per recipient reads its `Incoming` stream and acknowledges each
//! message, as the CLI does once it has shown it; one task per sender issues
//! sends without waiting for them (each send is a future in a
//! `FuturesUnordered`, like a user firing many messages):
//!
//! * open loop: sends are scheduled at fixed instants; a send issued late
//!   still counts its latency from its slot (no coordinated omission);
//! * closed loop: a sender keeps W messages between "send" and "shown";
//!   the recipient's task returns a permit when one arrives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chat_core::{ChatClient, ClientId, ConnectionState, Incoming, IncomingEvent};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::probe::{self, Probe};
use crate::record::{LATE_AFTER, ReceiverLog, SenderLog, Totals, Window, error_kind, tally};
use crate::scenario::{Load, Point};

/// Most sends one sender keeps waiting for their answer (open loop). Past
/// it the sender waits, falls behind schedule, and says so in the counts.
const MAX_IN_FLIGHT_PER_SENDER: usize = 4096;
/// Clients connecting at once while the run is set up.
const CONNECT_CONCURRENCY: usize = 32;

/// Counters the progress bar reads while the run goes on.
#[derive(Debug, Default)]
pub struct Live {
    pub accepted: AtomicU64,
    pub delivered: AtomicU64,
    pub errors: AtomicU64,
}

/// What a run measured, before the process figures are added.
#[derive(Debug)]
pub struct Outcome {
    pub totals: Totals,
    /// The instant every `_ns` figure counts from.
    pub epoch: Instant,
    pub window: Window,
    /// Connect + join of each client, in µs.
    pub setup_us: hdrhistogram::Histogram<u64>,
    /// Time from the last send to the last delivery (or the drain timeout).
    pub drain: Duration,
}

/// Where a run is, for whoever acts on its phases (process sampling, fault
/// injection).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Connecting and joining, then warming up.
    #[default]
    Setup,
    /// The measured window.
    Window,
    /// Sending stopped (draining, or done).
    Ended,
}

/// Announces the run's phases.
#[derive(Debug, Default)]
pub struct Marks {
    pub phase: Option<watch::Sender<Phase>>,
}

impl Marks {
    fn set(&self, phase: Phase) {
        if let Some(tx) = &self.phase {
            let _ = tx.send(phase);
        }
    }
}

/// Runs one point against `config`. Client IDs are `<tag>-<index>`.
pub async fn run<C: ChatClient>(
    config: &C::Config,
    point: &Point,
    tag: &str,
    live: Arc<Live>,
    marks: Marks,
) -> anyhow::Result<Outcome> {
    let n = point.clients;
    let ids: Vec<ClientId> = (0..n)
        .map(|i| ClientId::parse(&format!("{tag}-{i}")))
        .collect::<Result<_, _>>()?;

    // Connect and join everyone first: registration is not what is measured.
    let mut setup_us = crate::record::histogram();
    let joined: Vec<(usize, C, Incoming, Duration)> =
        futures::stream::iter(ids.iter().cloned().enumerate())
            .map(|(i, id)| async move {
                let t = Instant::now();
                // A random secret per client, kept in memory: each run uses
                // IDs of its own, so nothing needs it again.
                let client = C::connect(config, id, chat_core::Secret::generate()).await?;
                let incoming = client.join().await?;
                Ok::<_, chat_core::ClientError>((i, client, incoming, t.elapsed()))
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| {
                anyhow::anyhow!(
                    "a synthetic client could not join: {e}{}",
                    limit_hint(point)
                )
            })?;
    let mut clients: Vec<Option<(C, Incoming)>> = (0..n).map(|_| None).collect();
    for (i, c, inc, took) in joined {
        setup_us.saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1));
        clients[i] = Some((c, inc));
    }
    let (clients, incomings): (Vec<C>, Vec<Incoming>) = clients
        .into_iter()
        .map(|c| c.expect("every client joined"))
        .unzip();

    let senders = point.pattern.senders(n);
    let permits: Vec<Arc<Semaphore>> = (0..n)
        .map(|_| {
            let w = match point.load {
                Load::Window(w) => w as usize,
                Load::Rate(_) => 0,
            };
            Arc::new(Semaphore::new(w))
        })
        .collect();

    let epoch = Instant::now();
    let warmup_ns = point.warmup.as_nanos() as u64;
    let window = Window {
        start_ns: warmup_ns,
        end_ns: warmup_ns + point.duration.as_nanos() as u64,
    };
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut receivers = Vec::new();
    for (i, incoming) in incomings.into_iter().enumerate() {
        receivers.push(tokio::spawn(receive(
            i as u32,
            incoming,
            tag.to_owned(),
            epoch,
            window,
            permits.clone(),
            live.clone(),
            stop_rx.clone(),
        )));
    }

    let plan = Arc::new(SendPlan {
        tag: tag.to_owned(),
        epoch,
        window,
        point: point.clone(),
        ids: ids.clone(),
    });
    let mut pacer = None;
    let mut slot_rx: Vec<Option<mpsc::UnboundedReceiver<Instant>>> =
        (0..senders.len()).map(|_| None).collect();
    if let Load::Rate(rate) = point.load {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..senders.len())
            .map(|_| mpsc::unbounded_channel())
            .unzip();
        slot_rx = rxs.into_iter().map(Some).collect();
        let end = epoch + point.warmup + point.duration;
        pacer = Some(
            std::thread::Builder::new()
                .name("loadgen-pacer".into())
                .spawn(move || pace(rate, epoch, end, &txs))?,
        );
    }
    let mut sending = Vec::new();
    for (k, &s) in senders.iter().enumerate() {
        sending.push(tokio::spawn(send(
            plan.clone(),
            clients[s].clone(),
            s,
            slot_rx[k].take(),
            permits[s].clone(),
            live.clone(),
        )));
    }

    // Process figures are sampled over the measured window only.
    tokio::time::sleep_until(epoch + point.warmup).await;
    marks.set(Phase::Window);
    tokio::time::sleep_until(epoch + point.warmup + point.duration).await;
    marks.set(Phase::Ended);

    if let Some(p) = pacer {
        let _ = tokio::task::spawn_blocking(move || p.join()).await;
    }
    let mut sender_logs = Vec::new();
    for s in sending {
        sender_logs.push(s.await?);
    }
    let sends_done = Instant::now();
    // Drain: wait until everything accepted was shown, or give up.
    let accepted: u64 = sender_logs.iter().map(|s| s.accepted).sum();
    let failed = live.errors.load(Ordering::Relaxed);
    let drain_deadline = sends_done + point.drain;
    while !drained(live.delivered.load(Ordering::Relaxed), accepted, failed)
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain = sends_done.elapsed();
    let _ = stop_tx.send(true);
    let mut receiver_logs = Vec::new();
    for r in receivers {
        receiver_logs.push(r.await?);
    }
    drop(clients);
    Ok(Outcome {
        totals: tally(&sender_logs, &receiver_logs),
        epoch,
        window,
        setup_us,
        drain,
    })
}

/// Whether the drain may stop: `delivered` counts every probe shown, also
/// those of sends that failed on the sender's side (a request that timed
/// out may still have been accepted and forwarded). Comparing it with
/// `accepted` alone would stop the drain while accepted messages are still
/// on their way, and count them lost, whenever a timed-out send arrived
/// first. With failed sends the drain therefore waits for them too (or for
/// its timeout, for those that really went nowhere).
fn drained(delivered: u64, accepted: u64, failed: u64) -> bool {
    delivered >= accepted + failed
}

/// The open loop's clock: hands each sender its slots, round-robin, at
/// `rate` in total. A thread of its own sleeps to each slot with the OS's
/// timer (tens of µs), where the async runtime's timer would round every
/// wake-up to its 1 ms tick and add that to every latency measured from the
/// slot. A sender that falls behind finds its slots queued: their latency
/// still counts from the slot.
fn pace(rate: f64, epoch: Instant, end: Instant, senders: &[mpsc::UnboundedSender<Instant>]) {
    /// Slots closer than this are handed out without sleeping (a sleep
    /// costs more than it saves).
    const SPIN_FREE: Duration = Duration::from_micros(50);
    let gap = Duration::from_secs_f64(1.0 / rate);
    let (epoch_std, end_std) = (epoch.into_std(), end.into_std());
    for g in 0u64.. {
        let slot = epoch_std + gap.mul_f64(g as f64);
        if slot >= end_std {
            break;
        }
        let wait = slot.saturating_duration_since(std::time::Instant::now());
        if wait > SPIN_FREE {
            std::thread::sleep(wait);
        }
        let k = (g % senders.len() as u64) as usize;
        if senders[k].send(Instant::from_std(slot)).is_err() {
            return;
        }
    }
}

/// A hint for the one failure at setup that is about the host, not loadgen.
fn limit_hint(point: &Point) -> String {
    if point.stack.is_amqp() && point.clients > 500 {
        format!(
            " ({} AMQP connections: check the broker's open-file limit, see `loadgen check-broker`)",
            point.clients
        )
    } else {
        String::new()
    }
}

struct SendPlan {
    tag: String,
    epoch: Instant,
    window: Window,
    point: Point,
    ids: Vec<ClientId>,
}

impl SendPlan {
    fn ns_since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// Recipients in turn (fixed patterns) or at random (seeded per sender).
struct Recipients {
    fixed: Vec<usize>,
    next: usize,
    me: usize,
    clients: usize,
    rng: rand::rngs::StdRng,
}

impl Recipients {
    fn next(&mut self) -> usize {
        if self.fixed.is_empty() {
            // Any client but the sender.
            let r = self.rng.random_range(0..self.clients - 1);
            if r >= self.me { r + 1 } else { r }
        } else {
            let r = self.fixed[self.next % self.fixed.len()];
            self.next += 1;
            r
        }
    }
}

type SendResult = (
    u32,
    u64,
    Instant,
    Instant,
    Result<(), chat_core::ClientError>,
);

async fn send<C: ChatClient>(
    plan: Arc<SendPlan>,
    client: C,
    me: usize,
    slots: Option<mpsc::UnboundedReceiver<Instant>>,
    window_permits: Arc<Semaphore>,
    live: Arc<Live>,
) -> SenderLog {
    let point = &plan.point;
    let mut log = SenderLog::new(me as u32);
    let mut to = Recipients {
        fixed: point.pattern.recipients(me, point.clients),
        next: 0,
        me,
        clients: point.clients,
        rng: rand::rngs::StdRng::seed_from_u64(
            point.seed ^ (me as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ),
    };
    let end = plan.epoch + point.warmup + point.duration;
    let mut in_flight = FuturesUnordered::new();
    let one = |to: usize, n: u64, slot: Instant| {
        let client = client.clone();
        let recipient = plan.ids[to].clone();
        let text = probe::encode(
            &plan.tag,
            Probe {
                sender: me as u32,
                n,
                intended_ns: plan.ns_since_epoch(slot),
            },
            point.payload,
        );
        async move {
            let issued = Instant::now();
            let r = client.send(&recipient, &text).await.map(|_| ());
            (to as u32, n, slot, issued, r)
        }
    };
    let finish = |log: &mut SenderLog, (to, n, slot, issued, r): SendResult| {
        let answered = Instant::now();
        let answered_ns = plan.ns_since_epoch(answered);
        match r {
            Ok(()) => {
                live.accepted.fetch_add(1, Ordering::Relaxed);
                log.timeline.accepted(answered_ns);
                log.accepted(
                    to,
                    n,
                    answered - issued,
                    plan.window.contains(plan.ns_since_epoch(slot)),
                    plan.window.contains(plan.ns_since_epoch(answered)),
                );
            }
            Err(e) => {
                live.errors.fetch_add(1, Ordering::Relaxed);
                log.timeline.error(answered_ns);
                tracing::debug!(error = %e, "send failed");
                log.failed(error_kind(&e));
            }
        }
    };
    match point.load {
        Load::Rate(_) => {
            let mut slots = slots.expect("open loop has a pacer");
            loop {
                let slot = tokio::select! {
                    biased;
                    Some(done) = in_flight.next(), if !in_flight.is_empty() => { finish(&mut log, done); continue; }
                    slot = slots.recv(), if in_flight.len() < MAX_IN_FLIGHT_PER_SENDER => match slot {
                        Some(slot) => slot,
                        None => break,
                    },
                };
                if Instant::now() > slot + LATE_AFTER {
                    log.behind_schedule += 1;
                }
                let r = to.next();
                let n = log.next_number(r as u32);
                in_flight.push(one(r, n, slot));
            }
        }
        Load::Window(_) => loop {
            let permit = tokio::select! {
                biased;
                Some(done) = in_flight.next(), if !in_flight.is_empty() => { finish(&mut log, done); continue; }
                p = window_permits.acquire() => p,
                () = tokio::time::sleep_until(end) => break,
            };
            let Ok(permit) = permit else { break };
            // Given back by the recipient's task when the message is shown.
            permit.forget();
            let now = Instant::now();
            if now >= end {
                break;
            }
            let r = to.next();
            let n = log.next_number(r as u32);
            in_flight.push(one(r, n, now));
        },
    }
    while let Some(done) = in_flight.next().await {
        finish(&mut log, done);
    }
    log
}

#[allow(clippy::too_many_arguments)]
async fn receive(
    me: u32,
    mut incoming: Incoming,
    tag: String,
    epoch: Instant,
    window: Window,
    permits: Vec<Arc<Semaphore>>,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) -> ReceiverLog {
    let mut log = ReceiverLog::new(me);
    loop {
        let event = tokio::select! {
            e = incoming.recv() => e,
            _ = stop.wait_for(|s| *s) => break,
        };
        match event {
            Some(IncomingEvent::Message(d)) => {
                let now_ns = epoch.elapsed().as_nanos() as u64;
                match probe::decode(&tag, &d.message.text) {
                    Some(p) => {
                        if log.shown(p, now_ns, window) {
                            live.delivered.fetch_add(1, Ordering::Relaxed);
                            if let Some(s) = permits.get(p.sender as usize) {
                                s.add_permits(1);
                            }
                        }
                    }
                    None => log.foreign += 1,
                }
                d.ack();
            }
            Some(IncomingEvent::State(state)) => {
                tracing::debug!(client = me, ?state, "connection change");
                if matches!(state, ConnectionState::Reconnecting { .. }) {
                    log.reconnects += 1;
                }
            }
            None => break,
        }
    }
    // Carry the last acknowledgements, so nothing is re-delivered later.
    incoming.close().await;
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_waits_for_accepted_messages_behind_timed_out_ones() {
        assert!(drained(100, 100, 0));
        assert!(!drained(99, 100, 0));
        // 10 sends timed out, 8 of them arrived anyway: 100 delivered is
        // not "everything accepted" (2 accepted ones may be missing).
        assert!(!drained(100, 92, 10));
        assert!(drained(102, 92, 10));
    }
}
