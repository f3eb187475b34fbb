//! The accounting is exact: a transport that drops, duplicates and reorders
//! on purpose is reported exactly, through the same driver real runs use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::client::incoming_channel;
use chat_core::{
    Accepted, ChatClient, ClientError, ClientId, ClientInfo, Incoming, IncomingSink, Message,
    MessageId, Secret,
};
use loadgen::driver::{self, Live, Marks};
use loadgen::scenario::{Load, Pattern, Point, StackKind};

const TAG: &str = "lgfault";

/// What the faulty transport did on purpose, per kind.
#[derive(Debug, Default)]
struct Faults {
    dropped: u64,
    duplicated: u64,
    reordered: u64,
}

/// A recipient's sink and its last seq.
type Inbox = (Arc<tokio::sync::Mutex<IncomingSink>>, Arc<Mutex<u64>>);

#[derive(Default)]
struct State {
    inboxes: HashMap<ClientId, Inbox>,
    /// Highest flow number delivered per (sender, recipient).
    highest: HashMap<(u32, ClientId), u64>,
    faults: Faults,
}

/// An in-memory "server" that misbehaves by the message's flow number:
/// n % 10 == 3 is dropped (after being accepted), 5 is shown twice (under
/// two seqs, as a server that logged it twice would), 7 is held back 30 ms.
#[derive(Clone, Debug, Default)]
struct Hub(Arc<Mutex<State>>);

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Faulty {
    hub: Hub,
    id: ClientId,
}

impl Hub {
    async fn deliver(&self, from: &ClientId, to: &ClientId, text: &str) {
        let probe = loadgen::probe::decode(TAG, text).expect("a probe");
        let (sink, seq) = {
            let mut s = self.0.lock().unwrap();
            let key = (probe.sender, to.clone());
            let highest = s.highest.get(&key).copied();
            if highest.is_some_and(|h| h > probe.n) {
                s.faults.reordered += 1;
            }
            s.highest
                .insert(key, highest.map_or(probe.n, |h| h.max(probe.n)));
            s.inboxes.get(to).cloned().expect("recipient joined")
        };
        let mut sink = sink.lock().await;
        let seq = {
            let mut seq = seq.lock().unwrap();
            *seq += 1;
            *seq
        };
        let m = Message {
            id: MessageId::generate(),
            from: from.clone(),
            to: to.clone(),
            text: text.to_owned(),
            timestamp_ms: 0,
            seq,
        };
        sink.deliver(m).await;
    }
}

impl ChatClient for Faulty {
    type Config = Hub;

    async fn connect(hub: &Hub, id: ClientId, _secret: Secret) -> Result<Self, ClientError> {
        Ok(Self {
            hub: hub.clone(),
            id,
        })
    }

    fn id(&self) -> &ClientId {
        &self.id
    }

    async fn register(&self) -> Result<bool, ClientError> {
        Ok(true)
    }

    async fn join_after(&self, after_seq: u64) -> Result<Incoming, ClientError> {
        let (sink, incoming, mut acks) = incoming_channel(after_seq);
        tokio::spawn(async move { while acks.recv().await.is_some() {} });
        self.hub.0.lock().unwrap().inboxes.insert(
            self.id.clone(),
            (
                Arc::new(tokio::sync::Mutex::new(sink)),
                Arc::new(Mutex::new(0)),
            ),
        );
        Ok(incoming)
    }

    async fn send(&self, to: &ClientId, text: &str) -> Result<Accepted, ClientError> {
        let n = loadgen::probe::decode(TAG, text).expect("a probe").n;
        match n % 10 {
            3 => self.hub.0.lock().unwrap().faults.dropped += 1,
            5 => {
                self.hub.deliver(&self.id, to, text).await;
                self.hub.0.lock().unwrap().faults.duplicated += 1;
                self.hub.deliver(&self.id, to, text).await;
            }
            7 => {
                let (hub, from, to, text) = (
                    self.hub.clone(),
                    self.id.clone(),
                    to.clone(),
                    text.to_owned(),
                );
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    hub.deliver(&from, &to, &text).await;
                });
            }
            _ => self.hub.deliver(&self.id, to, text).await,
        }
        Ok(Accepted {
            id: MessageId::generate(),
            timestamp_ms: 0,
        })
    }

    async fn list_clients(&self) -> Result<Vec<ClientInfo>, ClientError> {
        Ok(Vec::new())
    }

    async fn history(&self) -> Result<Vec<Message>, ClientError> {
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_duplicates_and_reordering_are_reported_exactly() {
    let hub = Hub::default();
    let point = Point {
        experiment: "test".into(),
        stack: StackKind::Grpc,
        clients: 4,
        load: Load::Rate(2000.0),
        duration: Duration::from_millis(600),
        warmup: Duration::from_millis(100),
        payload: 64,
        pattern: Pattern::Pairs,
        seed: 1,
        drain: Duration::from_millis(500),
        fault: None,
    };
    let outcome = driver::run::<Faulty>(
        &hub,
        &point,
        TAG,
        Arc::new(Live::default()),
        Marks::default(),
    )
    .await
    .unwrap();
    let t = outcome.totals;
    let f = std::mem::take(&mut hub.0.lock().unwrap().faults);
    assert!(
        f.dropped > 10 && f.duplicated > 10 && f.reordered > 10,
        "{f:?}"
    );
    assert_eq!(t.sent, t.accepted);
    assert_eq!(t.errors.len(), 0);
    assert_eq!(t.lost, f.dropped);
    assert_eq!(t.duplicates, f.duplicated);
    assert_eq!(t.out_of_order, f.reordered);
    assert_eq!(t.delivered, t.accepted - f.dropped);
    assert_eq!(t.delivered_unaccepted, 0);
    assert!(
        !t.e2e_us.is_empty() && t.e2e_us.len() < t.delivered,
        "warm-up excluded from latency"
    );
}
