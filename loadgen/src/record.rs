//! Exact accounting of one run, without locks on the hot path.
//!
//! Every sender task owns a [`SenderLog`] and every recipient task a
//! [`ReceiverLog`]; they are only combined by [`tally`] after the run. A
//! flow (sender → recipient) numbers its messages 0, 1, 2, … so a bitset per
//! flow on each side answers, exactly: which accepted messages never
//! arrived (lost), which arrived twice (duplicates), which arrived after a
//! later one of the same flow (out of order), and which arrived although
//! their send reported an error (a timeout whose request went through).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::probe::Probe;

/// Highest latency a histogram holds (1 h, in µs); larger values saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Latencies of one task, in µs, until the run ends. A histogram per task
/// would cost ~190 KB each (2000 of them for 1000 clients); raw samples cost
/// 4 bytes per message and are folded into one histogram by [`tally`].
#[derive(Clone, Debug, Default)]
pub struct Samples(Vec<u32>);

impl Samples {
    pub fn record(&mut self, d: Duration) {
        self.0
            .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn add_to(&self, h: &mut Histogram<u64>) {
        for &us in &self.0 {
            h.saturating_record(u64::from(us).clamp(1, MAX_LATENCY_US));
        }
    }
}

/// A growable set of small integers.
#[derive(Clone, Debug, Default)]
pub struct Bits(Vec<u64>);

impl Bits {
    /// Adds `n`; false if it was there already.
    pub fn insert(&mut self, n: u64) -> bool {
        let (word, bit) = ((n / 64) as usize, n % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let was = self.0[word] & (1 << bit) != 0;
        self.0[word] |= 1 << bit;
        !was
    }

    pub fn contains(&self, n: u64) -> bool {
        self.0
            .get((n / 64) as usize)
            .is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// How many members of `self` are not in `other`.
    pub fn count_missing_from(&self, other: &Bits) -> u64 {
        self.0
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let o = other.0.get(i).copied().unwrap_or(0);
                u64::from((w & !o).count_ones())
            })
            .sum()
    }
}

/// Width of one timeline bucket.
pub const TICK: Duration = Duration::from_millis(100);
const TICK_NS: u64 = TICK.as_nanos() as u64;

/// The run as a function of time, in [`TICK`] buckets since the run's
/// epoch: what a fault does to throughput and latency, and when it recovers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    pub accepted: Vec<u32>,
    pub errors: Vec<u32>,
    pub delivered: Vec<u32>,
    /// Largest end-to-end latency of the messages shown in the bucket, µs.
    pub max_e2e_us: Vec<u32>,
}

fn bucket(v: &mut Vec<u32>, ns: u64) -> &mut u32 {
    let i = usize::try_from(ns / TICK_NS).unwrap_or(usize::MAX);
    if i >= v.len() {
        v.resize(i + 1, 0);
    }
    &mut v[i]
}

fn add_into(into: &mut Vec<u32>, from: &[u32], combine: fn(u32, u32) -> u32) {
    if from.len() > into.len() {
        into.resize(from.len(), 0);
    }
    for (a, &b) in into.iter_mut().zip(from) {
        *a = combine(*a, b);
    }
}

impl Timeline {
    pub fn accepted(&mut self, ns: u64) {
        *bucket(&mut self.accepted, ns) += 1;
    }

    pub fn error(&mut self, ns: u64) {
        *bucket(&mut self.errors, ns) += 1;
    }

    pub fn delivered(&mut self, ns: u64, latency: Duration) {
        *bucket(&mut self.delivered, ns) += 1;
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let max = bucket(&mut self.max_e2e_us, ns);
        *max = (*max).max(us);
    }

    pub fn add(&mut self, other: &Timeline) {
        add_into(&mut self.accepted, &other.accepted, u32::saturating_add);
        add_into(&mut self.errors, &other.errors, u32::saturating_add);
        add_into(&mut self.delivered, &other.delivered, u32::saturating_add);
        add_into(&mut self.max_e2e_us, &other.max_e2e_us, u32::max);
    }

    /// Buckets in all four series.
    pub fn len(&self) -> usize {
        [
            &self.accepted,
            &self.errors,
            &self.delivered,
            &self.max_e2e_us,
        ]
        .iter()
        .map(|v| v.len())
        .max()
        .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn at(v: &[u32], i: usize) -> u32 {
        v.get(i).copied().unwrap_or(0)
    }

    /// `(start of bucket in s, accepted, errors, delivered, max e2e µs)`.
    pub fn rows(&self) -> impl Iterator<Item = (f64, u32, u32, u32, u32)> + '_ {
        (0..self.len()).map(|i| {
            (
                (i as u64 * TICK_NS) as f64 / 1e9,
                Self::at(&self.accepted, i),
                Self::at(&self.errors, i),
                Self::at(&self.delivered, i),
                Self::at(&self.max_e2e_us, i),
            )
        })
    }

    /// After a fault at `fault_ns`: how long until deliveries are back to
    /// normal, where normal is the mean per bucket between `from_ns` and the
    /// fault. The dip is the first bucket after the fault below half of
    /// normal; recovery is the end of the first bucket after the dip back at
    /// 90% or more. `Some(ZERO)`: no dip; `None`: no recovery in the run.
    pub fn recovery(&self, from_ns: u64, fault_ns: u64) -> Option<Duration> {
        let (a, f) = ((from_ns / TICK_NS) as usize, (fault_ns / TICK_NS) as usize);
        if f <= a {
            return None;
        }
        let before: u64 = (a..f)
            .map(|i| u64::from(Self::at(&self.delivered, i)))
            .sum();
        let normal = before as f64 / (f - a) as f64;
        let level = |i: usize| f64::from(Self::at(&self.delivered, i));
        let Some(dip) = (f..self.len()).find(|&i| level(i) < 0.5 * normal) else {
            return Some(Duration::ZERO);
        };
        (dip + 1..self.len())
            .find(|&i| level(i) >= 0.9 * normal)
            .map(|i| Duration::from_nanos(((i as u64 + 1) * TICK_NS).saturating_sub(fault_ns)))
    }

    /// Largest end-to-end latency shown from `from_ns` on, µs.
    pub fn max_latency_since(&self, from_ns: u64) -> u32 {
        let a = (from_ns / TICK_NS) as usize;
        self.max_e2e_us.iter().skip(a).copied().max().unwrap_or(0)
    }
}

/// The measured part of the run, in nanoseconds since the run's epoch.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Window {
    pub fn contains(&self, ns: u64) -> bool {
        (self.start_ns..self.end_ns).contains(&ns)
    }

    pub fn secs(&self) -> f64 {
        (self.end_ns - self.start_ns) as f64 / 1e9
    }
}

/// One sender's side of the run.
#[derive(Debug)]
pub struct SenderLog {
    pub index: u32,
    /// `send` calls made.
    pub sent: u64,
    /// Sends the server accepted.
    pub accepted: u64,
    /// Accepted with the answer inside the measured window.
    pub accepted_in_window: u64,
    /// Open loop: sends issued more than [`LATE_AFTER`] after their slot.
    pub behind_schedule: u64,
    /// Failed sends by kind (`timeout`, `unavailable`, `rejected:<code>`…).
    pub errors: BTreeMap<String, u64>,
    /// Send → server's answer, for sends scheduled inside the window.
    pub accept_us: Samples,
    pub timeline: Timeline,
    next: HashMap<u32, u64>,
    accepted_bits: HashMap<u32, Bits>,
}

/// A send this much later than its slot counts as behind schedule.
pub const LATE_AFTER: Duration = Duration::from_millis(1);

impl SenderLog {
    pub fn new(index: u32) -> Self {
        Self {
            index,
            sent: 0,
            accepted: 0,
            accepted_in_window: 0,
            behind_schedule: 0,
            errors: BTreeMap::new(),
            accept_us: Samples::default(),
            timeline: Timeline::default(),
            next: HashMap::new(),
            accepted_bits: HashMap::new(),
        }
    }

    /// The number of the next message to `to`; counts it as sent.
    pub fn next_number(&mut self, to: u32) -> u64 {
        self.sent += 1;
        let n = self.next.entry(to).or_insert(0);
        *n += 1;
        *n - 1
    }

    pub fn accepted(
        &mut self,
        to: u32,
        n: u64,
        took: Duration,
        scheduled_in_window: bool,
        answered_in_window: bool,
    ) {
        self.accepted += 1;
        self.accepted_bits.entry(to).or_default().insert(n);
        if scheduled_in_window {
            self.accept_us.record(took);
        }
        if answered_in_window {
            self.accepted_in_window += 1;
        }
    }

    pub fn failed(&mut self, kind: String) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }
}

#[derive(Debug, Default)]
struct Flow {
    seen: Bits,
    highest: Option<u64>,
}

/// One recipient's side of the run.
#[derive(Debug)]
pub struct ReceiverLog {
    pub index: u32,
    /// Distinct messages of this run shown to the recipient.
    pub delivered: u64,
    pub delivered_in_window: u64,
    /// Shown again after having been shown once.
    pub duplicates: u64,
    /// Shown after a later message of the same flow.
    pub out_of_order: u64,
    /// Texts that are not this run's probes (another run's leftovers).
    pub foreign: u64,
    /// Scheduled send → shown, for messages scheduled inside the window.
    pub e2e_us: Samples,
    /// Connection changes the client reported (reconnects, closes).
    pub reconnects: u64,
    pub timeline: Timeline,
    flows: HashMap<u32, Flow>,
}

impl ReceiverLog {
    pub fn new(index: u32) -> Self {
        Self {
            index,
            delivered: 0,
            delivered_in_window: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
            e2e_us: Samples::default(),
            reconnects: 0,
            timeline: Timeline::default(),
            flows: HashMap::new(),
        }
    }

    /// Records a message shown at `now_ns`; true if it is the first time.
    pub fn shown(&mut self, p: Probe, now_ns: u64, window: Window) -> bool {
        let flow = self.flows.entry(p.sender).or_default();
        if !flow.seen.insert(p.n) {
            self.duplicates += 1;
            return false;
        }
        match flow.highest {
            Some(h) if p.n < h => self.out_of_order += 1,
            _ => flow.highest = Some(p.n),
        }
        self.delivered += 1;
        self.timeline.delivered(
            now_ns,
            Duration::from_nanos(now_ns.saturating_sub(p.intended_ns)),
        );
        if window.contains(now_ns) {
            self.delivered_in_window += 1;
        }
        if window.contains(p.intended_ns) {
            self.e2e_us
                .record(Duration::from_nanos(now_ns.saturating_sub(p.intended_ns)));
        }
        true
    }
}

/// The whole run's accounting.
#[derive(Debug)]
pub struct Totals {
    pub sent: u64,
    pub accepted: u64,
    pub accepted_in_window: u64,
    pub behind_schedule: u64,
    pub errors: BTreeMap<String, u64>,
    pub delivered: u64,
    pub delivered_in_window: u64,
    /// Accepted, never shown within the drain timeout.
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Shown although the send reported an error.
    pub delivered_unaccepted: u64,
    pub foreign: u64,
    pub reconnects: u64,
    pub e2e_us: Histogram<u64>,
    pub accept_us: Histogram<u64>,
    pub timeline: Timeline,
}

/// Combines every side's log into the run's totals.
pub fn tally(senders: &[SenderLog], receivers: &[ReceiverLog]) -> Totals {
    let mut t = Totals::empty();
    let by_index: HashMap<u32, &ReceiverLog> = receivers.iter().map(|r| (r.index, r)).collect();
    for s in senders {
        t.add_sender(s, &by_index);
    }
    for r in receivers {
        t.add_receiver(r, senders);
    }
    t
}

impl Totals {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Nothing counted yet.
    fn empty() -> Self {
        Self {
            sent: 0,
            accepted: 0,
            accepted_in_window: 0,
            behind_schedule: 0,
            errors: BTreeMap::new(),
            delivered: 0,
            delivered_in_window: 0,
            lost: 0,
            duplicates: 0,
            out_of_order: 0,
            delivered_unaccepted: 0,
            foreign: 0,
            reconnects: 0,
            e2e_us: histogram(),
            accept_us: histogram(),
            timeline: Timeline::default(),
        }
    }

    /// Adds a sender's counts; what it had accepted and its recipient (in
    /// `receivers`, by index) never showed is lost.
    fn add_sender(&mut self, s: &SenderLog, receivers: &HashMap<u32, &ReceiverLog>) {
        let empty = Flow::default();
        self.sent += s.sent;
        self.accepted += s.accepted;
        self.accepted_in_window += s.accepted_in_window;
        self.behind_schedule += s.behind_schedule;
        for (k, v) in &s.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        s.accept_us.add_to(&mut self.accept_us);
        self.timeline.add(&s.timeline);
        for (to, accepted) in &s.accepted_bits {
            let flow = receivers
                .get(to)
                .and_then(|r| r.flows.get(&s.index))
                .unwrap_or(&empty);
            self.lost += accepted.count_missing_from(&flow.seen);
        }
    }

    /// Adds a recipient's counts; what it showed that its sender (in
    /// `senders`) never saw accepted counts as delivered unaccepted.
    fn add_receiver(&mut self, r: &ReceiverLog, senders: &[SenderLog]) {
        let no_bits = Bits::default();
        let accepted_of = |from: u32, to: u32| {
            senders
                .iter()
                .find(|s| s.index == from)
                .and_then(|s| s.accepted_bits.get(&to))
                .unwrap_or(&no_bits)
        };
        self.delivered += r.delivered;
        self.delivered_in_window += r.delivered_in_window;
        self.duplicates += r.duplicates;
        self.out_of_order += r.out_of_order;
        self.foreign += r.foreign;
        self.reconnects += r.reconnects;
        r.e2e_us.add_to(&mut self.e2e_us);
        self.timeline.add(&r.timeline);
        for (from, flow) in &r.flows {
            self.delivered_unaccepted += flow.seen.count_missing_from(accepted_of(*from, r.index));
        }
    }
}

/// Classifies a client error for the `errors` column.
pub fn error_kind(e: &chat_core::ClientError) -> String {
    use chat_core::ClientError as E;
    match e {
        E::Rejected { code, .. } => format!("rejected:{}", code.as_str_name().to_lowercase()),
        E::Unavailable { .. } => "unavailable".into(),
        E::Protocol(_) => "protocol".into(),
        E::Local(_) => "local".into(),
        E::Timeout(_) => "timeout".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(sender: u32, n: u64, intended_ns: u64) -> Probe {
        Probe {
            sender,
            n,
            intended_ns,
        }
    }

    const ALL: Window = Window {
        start_ns: 0,
        end_ns: u64::MAX,
    };

    /// A transport that drops, duplicates and reorders on purpose is
    /// reported exactly.
    #[test]
    fn loss_duplicates_and_reordering_are_counted_exactly() {
        let mut s = SenderLog::new(0);
        for _ in 0..10 {
            let n = s.next_number(1);
            if n != 9 {
                // message 9: the send failed (say, a timeout)...
                s.accepted(1, n, Duration::from_micros(100), true, true);
            } else {
                s.failed("timeout".into());
            }
        }
        let mut r = ReceiverLog::new(1);
        // ...yet it arrives; 3 and 7 are lost; 5 comes twice; 2 after 4.
        for n in [0, 1, 4, 2, 5, 5, 6, 8, 9] {
            r.shown(probe(0, n, 0), 1_000, ALL);
        }
        let t = tally(&[s], &[r]);
        assert_eq!(t.sent, 10);
        assert_eq!(t.accepted, 9);
        assert_eq!(t.errors.get("timeout"), Some(&1));
        assert_eq!(t.delivered, 8);
        assert_eq!(t.lost, 2);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.delivered_unaccepted, 1);
    }

    #[test]
    fn flows_are_kept_apart() {
        let mut a = SenderLog::new(0);
        let mut b = SenderLog::new(2);
        for s in [&mut a, &mut b] {
            for _ in 0..3 {
                let n = s.next_number(1);
                s.accepted(1, n, Duration::from_micros(5), true, true);
            }
        }
        let mut r = ReceiverLog::new(1);
        // the same numbers from two senders are different messages
        for n in 0..3 {
            assert!(r.shown(probe(0, n, 0), 1, ALL));
            assert!(r.shown(probe(2, n, 0), 1, ALL));
        }
        let t = tally(&[a, b], &[r]);
        assert_eq!(
            (t.delivered, t.lost, t.duplicates, t.out_of_order),
            (6, 0, 0, 0)
        );
    }

    #[test]
    fn latency_counts_from_the_scheduled_instant_inside_the_window() {
        let window = Window {
            start_ns: 1_000_000,
            end_ns: 2_000_000,
        };
        let mut r = ReceiverLog::new(1);
        r.shown(probe(0, 0, 500_000), 1_100_000, window); // warm-up: not recorded
        r.shown(probe(0, 1, 1_000_000), 1_250_000, window); // 250 µs
        r.shown(probe(0, 2, 1_500_000), 2_500_000, window); // late: 1000 µs
        assert_eq!(r.e2e_us.0, vec![250, 1000]);
        assert_eq!(r.delivered_in_window, 2);
    }

    #[test]
    fn percentiles_of_a_known_sample() {
        let mut samples = Samples::default();
        for us in 1..=1000 {
            samples.record(Duration::from_micros(us));
        }
        let mut h = histogram();
        samples.add_to(&mut h);
        assert_eq!(h.value_at_quantile(0.5), 500);
        assert_eq!(h.value_at_quantile(0.9), 900);
        assert_eq!(h.value_at_quantile(0.99), 990);
        assert_eq!(h.max(), 1000);
    }

    #[test]
    fn the_timeline_shows_a_gap_and_its_recovery() {
        let ms = |m: u64| m * 1_000_000;
        let mut t = Timeline::default();
        // 10 deliveries per 100 ms bucket for 1 s, nothing for 0.5 s (a
        // fault at 1.0 s), then 10 again; one slow message after the gap.
        for b in (0..10).chain(15..20) {
            for k in 0..10 {
                t.delivered(ms(b * 100 + k), Duration::from_micros(200));
            }
        }
        t.delivered(ms(1500), Duration::from_millis(450));
        assert_eq!(t.delivered[12], 0);
        assert_eq!(t.recovery(0, ms(1000)), Some(Duration::from_millis(600)));
        // A fault that only bites later (a broker taking time to stop).
        assert_eq!(t.recovery(0, ms(800)), Some(Duration::from_millis(800)));
        assert_eq!(t.recovery(0, ms(1900)), Some(Duration::ZERO), "no dip");
        assert_eq!(t.max_latency_since(ms(1000)), 450_000);
        let mut sum = Timeline::default();
        sum.add(&t);
        sum.add(&t);
        assert_eq!(sum.delivered[0], 20);
        assert_eq!(sum.max_e2e_us[15], 450_000);
        assert_eq!(sum.rows().count(), 20);
    }

    #[test]
    fn bits_count_what_is_missing() {
        let mut a = Bits::default();
        let mut b = Bits::default();
        for n in [0, 63, 64, 200] {
            assert!(a.insert(n));
        }
        assert!(!a.insert(64));
        b.insert(63);
        assert_eq!(a.len(), 4);
        assert_eq!(a.count_missing_from(&b), 3);
        assert_eq!(b.count_missing_from(&a), 0);
        assert!(a.contains(200) && !a.contains(201));
    }
}
