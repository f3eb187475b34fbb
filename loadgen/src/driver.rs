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
use tokio::task::JoinHandle;
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
    let ids: Vec<ClientId> = (0..point.clients)
        .map(|i| ClientId::parse(&format!("{tag}-{i}")))
        .collect::<Result<_, _>>()?;
    let (clients, incomings, setup_us) = join_all::<C>(config, &ids, point).await?;
    let senders = point.pattern.senders(point.clients);
    let permits = window_permits(point);

    let epoch = Instant::now();
    let warmup_ns = point.warmup.as_nanos() as u64;
    let window = Window {
        start_ns: warmup_ns,
        end_ns: warmup_ns + point.duration.as_nanos() as u64,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let receivers = spawn_receivers(incomings, tag, epoch, window, &permits, &live, &stop_rx);

    let plan = Arc::new(SendPlan {
        tag: tag.to_owned(),
        epoch,
        window,
        point: point.clone(),
        ids,
    });
    let sending = start_sending(&plan, &clients, &senders, &permits, &live)?;

    // Process figures are sampled over the measured window only.
    tokio::time::sleep_until(epoch + point.warmup).await;
    marks.set(Phase::Window);
    tokio::time::sleep_until(epoch + point.warmup + point.duration).await;
    marks.set(Phase::Ended);

    let (sender_logs, drain) = finish_sending(sending, point, &live).await?;
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

/// Connects and joins every client of `ids` (at most
/// [`CONNECT_CONCURRENCY`] at once): registration is not what is measured.
/// Returns the clients and their incoming streams in the order of `ids`,
/// with the histogram of each one's connect + join time.
async fn join_all<C: ChatClient>(
    config: &C::Config,
    ids: &[ClientId],
    point: &Point,
) -> anyhow::Result<(Vec<C>, Vec<Incoming>, hdrhistogram::Histogram<u64>)> {
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
    let mut clients: Vec<Option<(C, Incoming)>> = (0..ids.len()).map(|_| None).collect();
    for (i, c, inc, took) in joined {
        setup_us.saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1));
        clients[i] = Some((c, inc));
    }
    let (clients, incomings) = clients
        .into_iter()
        .map(|c| c.expect("every client joined"))
        .unzip();
    Ok((clients, incomings, setup_us))
}

/// One semaphore per client: the closed loop's window of messages between
/// "send" and "shown" (none in the open loop, which does not use them).
fn window_permits(point: &Point) -> Vec<Arc<Semaphore>> {
    (0..point.clients)
        .map(|_| {
            let w = match point.load {
                Load::Window(w) => w as usize,
                Load::Rate(_) => 0,
            };
            Arc::new(Semaphore::new(w))
        })
        .collect()
}

/// Starts one [`receive`] task per client, in client order.
fn spawn_receivers(
    incomings: Vec<Incoming>,
    tag: &str,
    epoch: Instant,
    window: Window,
    permits: &[Arc<Semaphore>],
    live: &Arc<Live>,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<ReceiverLog>> {
    // One copy for all receivers, not one per receiver (1000 clients would
    // otherwise clone 1000 permit lists of 1000 each).
    let shared = Arc::new(Receiving {
        tag: tag.into(),
        epoch,
        window,
        permits: permits.into(),
        live: live.clone(),
    });
    incomings
        .into_iter()
        .enumerate()
        .map(|(i, incoming)| {
            tokio::spawn(receive(i as u32, incoming, shared.clone(), stop.clone()))
        })
        .collect()
}

/// What every [`receive`] task reads: the run's tag and clock, the
/// measured window, the senders' window permits and the live counters.
struct Receiving {
    tag: Arc<str>,
    epoch: Instant,
    window: Window,
    permits: Arc<[Arc<Semaphore>]>,
    live: Arc<Live>,
}

/// The sending side of a run under way.
struct Sending {
    /// The open loop's [`pace`] thread.
    pacer: Option<std::thread::JoinHandle<()>>,
    /// One [`send`] task per sender.
    tasks: Vec<JoinHandle<SenderLog>>,
}

/// Starts the open loop's [`pace`] thread (for a rate) and one [`send`]
/// task per sender (`senders` holds their client indices).
fn start_sending<C: ChatClient>(
    plan: &Arc<SendPlan>,
    clients: &[C],
    senders: &[usize],
    permits: &[Arc<Semaphore>],
    live: &Arc<Live>,
) -> std::io::Result<Sending> {
    let point = &plan.point;
    let mut pacer = None;
    let mut slot_rx: Vec<Option<mpsc::UnboundedReceiver<Instant>>> =
        (0..senders.len()).map(|_| None).collect();
    if let Load::Rate(rate) = point.load {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..senders.len())
            .map(|_| mpsc::unbounded_channel())
            .unzip();
        slot_rx = rxs.into_iter().map(Some).collect();
        let (epoch, end) = (plan.epoch, plan.epoch + point.warmup + point.duration);
        pacer = Some(
            std::thread::Builder::new()
                .name("loadgen-pacer".into())
                .spawn(move || pace(rate, epoch, end, &txs))?,
        );
    }
    let mut tasks = Vec::new();
    for (k, &s) in senders.iter().enumerate() {
        tasks.push(tokio::spawn(send(
            plan.clone(),
            clients[s].clone(),
            s,
            slot_rx[k].take(),
            permits[s].clone(),
            live.clone(),
        )));
    }
    Ok(Sending { pacer, tasks })
}

/// Waits for the pacer and the senders to stop, then drains: waits until
/// everything accepted was shown, or gives up after the point's drain
/// timeout. Returns the senders' logs and how long the drain took.
async fn finish_sending(
    sending: Sending,
    point: &Point,
    live: &Live,
) -> anyhow::Result<(Vec<SenderLog>, Duration)> {
    if let Some(p) = sending.pacer {
        let _ = tokio::task::spawn_blocking(move || p.join()).await;
    }
    let mut sender_logs = Vec::new();
    for s in sending.tasks {
        sender_logs.push(s.await?);
    }
    let sends_done = Instant::now();
    let accepted: u64 = sender_logs.iter().map(|s| s.accepted).sum();
    let failed = live.errors.load(Ordering::Relaxed);
    let drain_deadline = sends_done + point.drain;
    while !drained(live.delivered.load(Ordering::Relaxed), accepted, failed)
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((sender_logs, sends_done.elapsed()))
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
    /// The recipients of client `me` in the point's pattern; the random
    /// ones come from a generator seeded by the point's seed and `me`.
    fn of(point: &Point, me: usize) -> Self {
        Self {
            fixed: point.pattern.recipients(me, point.clients),
            next: 0,
            me,
            clients: point.clients,
            rng: rand::rngs::StdRng::seed_from_u64(
                point.seed ^ (me as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ),
        }
    }

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

/// What one send answered: recipient, number, its slot (the instant its
/// latency counts from), when it was issued, and the outcome.
type SendResult = (
    u32,
    u64,
    Instant,
    Instant,
    Result<(), chat_core::ClientError>,
);

/// One synthetic client's sending side: whom it sends to next, and the log
/// of what it sent and what was answered.
struct SyntheticSender<C> {
    plan: Arc<SendPlan>,
    /// Cloned into each send, which then runs on its own.
    client: C,
    /// This client's index (the probes' sender).
    me: usize,
    to: Recipients,
    /// Counts for the progress line.
    live: Arc<Live>,
    log: SenderLog,
}

/// One sender's task: issues sends in the point's loop (open or closed)
/// until the window ends, then waits for the answers of those in flight.
async fn send<C: ChatClient>(
    plan: Arc<SendPlan>,
    client: C,
    me: usize,
    slots: Option<mpsc::UnboundedReceiver<Instant>>,
    window_permits: Arc<Semaphore>,
    live: Arc<Live>,
) -> SenderLog {
    let mut sender = SyntheticSender {
        to: Recipients::of(&plan.point, me),
        log: SenderLog::new(me as u32),
        plan,
        client,
        me,
        live,
    };
    match sender.plan.point.load {
        Load::Rate(_) => {
            let slots = slots.expect("open loop has a pacer");
            sender.open_loop(slots).await;
        }
        Load::Window(_) => sender.closed_loop(&window_permits).await,
    }
    sender.log
}

impl<C: ChatClient> SyntheticSender<C> {
    /// Issues one send per slot the pacer hands out, without waiting for
    /// the answers (at most [`MAX_IN_FLIGHT_PER_SENDER`] at once).
    async fn open_loop(&mut self, mut slots: mpsc::UnboundedReceiver<Instant>) {
        let mut in_flight = FuturesUnordered::new();
        loop {
            let slot = tokio::select! {
                biased;
                Some(done) = in_flight.next(), if !in_flight.is_empty() => { self.finish(done); continue; }
                slot = slots.recv(), if in_flight.len() < MAX_IN_FLIGHT_PER_SENDER => match slot {
                    Some(slot) => slot,
                    None => break,
                },
            };
            if Instant::now() > slot + LATE_AFTER {
                self.log.behind_schedule += 1;
            }
            in_flight.push(self.issue(slot));
        }
        self.settle(in_flight).await;
    }

    /// Keeps the window's messages between "send" and "shown": issues a
    /// send whenever the recipients' tasks give a permit back.
    async fn closed_loop(&mut self, window_permits: &Semaphore) {
        let end = self.plan.epoch + self.plan.point.warmup + self.plan.point.duration;
        let mut in_flight = FuturesUnordered::new();
        loop {
            let permit = tokio::select! {
                biased;
                Some(done) = in_flight.next(), if !in_flight.is_empty() => { self.finish(done); continue; }
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
            in_flight.push(self.issue(now));
        }
        self.settle(in_flight).await;
    }

    /// Records the answers of the sends still in flight.
    async fn settle(&mut self, mut in_flight: FuturesUnordered<impl Future<Output = SendResult>>) {
        while let Some(done) = in_flight.next().await {
            self.finish(done);
        }
    }

    /// The next send, due at `slot`: picks its recipient and number now;
    /// the returned future issues it (the instant it is first polled is
    /// when it was issued) and yields its answer.
    fn issue(&mut self, slot: Instant) -> impl Future<Output = SendResult> + use<C> {
        let to = self.to.next();
        let n = self.log.next_number(to as u32);
        let client = self.client.clone();
        let recipient = self.plan.ids[to].clone();
        let text = probe::encode(
            &self.plan.tag,
            Probe {
                sender: self.me as u32,
                n,
                intended_ns: self.plan.ns_since_epoch(slot),
            },
            self.plan.point.payload,
        );
        async move {
            let issued = Instant::now();
            let r = client.send(&recipient, &text).await.map(|_| ());
            (to as u32, n, slot, issued, r)
        }
    }

    /// Records one answer: an acceptance (its latency from `issued` is kept
    /// when its slot fell in the window) or an error.
    fn finish(&mut self, (to, n, slot, issued, r): SendResult) {
        let plan = &self.plan;
        let log = &mut self.log;
        let answered = Instant::now();
        let answered_ns = plan.ns_since_epoch(answered);
        match r {
            Ok(()) => {
                self.live.accepted.fetch_add(1, Ordering::Relaxed);
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
                self.live.errors.fetch_add(1, Ordering::Relaxed);
                log.timeline.error(answered_ns);
                tracing::debug!(error = %e, "send failed");
                log.failed(error_kind(&e));
            }
        }
    }
}

/// One client's receiving side: notes each probe message shown (repeats and
/// foreign messages apart), gives its sender's window permit back, acks it,
/// and counts reconnects; until `stop`, then carries the last acks.
async fn receive(
    me: u32,
    mut incoming: Incoming,
    run: Arc<Receiving>,
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
                let now_ns = run.epoch.elapsed().as_nanos() as u64;
                match probe::decode(&run.tag, &d.message.text) {
                    Some(p) => {
                        if log.shown(p, now_ns, run.window) {
                            run.live.delivered.fetch_add(1, Ordering::Relaxed);
                            if let Some(s) = run.permits.get(p.sender as usize) {
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
