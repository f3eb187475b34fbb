//! [`ChatServer`]: the transport-independent chat server.
//!
//! It owns who is registered and online, every client's history, and every
//! recipient's *mailbox*: the accepted messages that have not yet reached
//! their next hop. Each recipient has its own gap-free sequence number; its
//! mailbox holds the messages above its acknowledged cursor.
//!
//! * gRPC: the next hop is the client. A [`Session`] streams the mailbox and
//!   the client acknowledges what it has shown.
//! * AMQP: the next hop is the recipient's durable queue. The server
//!   acknowledges once the broker confirmed the publish, and re-publishes
//!   whatever is still in a mailbox after a restart.
//!
//! Either way a crash between "accepted" and "delivered" loses nothing, and
//! recipients drop any repeat by its sequence number, so nothing shows twice.
//!
//! Visibility follows durability: a message enters histories and mailboxes
//! only after the journal writer has appended it (see [`crate::journal`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chat_proto::v1 as pb;
use tokio::sync::{Notify, oneshot};

use crate::error::ChatError;
use crate::id::{ClientId, MessageId};
use crate::journal::{self, Durability, Job, JobSender, Record};
use crate::limits::Limits;
use crate::message::{ClientInfo, Message, now_ms};

/// Most messages a session takes from the mailbox in one go.
const SESSION_BATCH: usize = 256;

/// Server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub durability: Durability,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            limits: Limits::default(),
            durability: Durability::default(),
        }
    }
}

/// The chat server. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct ChatServer {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<Mutex<State>>,
    journal: JobSender,
    limits: Limits,
    data_dir: PathBuf,
    /// Held for the server's lifetime: one server per data directory.
    _lock: std::fs::File,
}

#[derive(Default)]
struct State {
    clients: BTreeMap<ClientId, Client>,
    /// Every accepted message by ID, so a retried send is accepted once.
    by_id: HashMap<MessageId, Arc<Message>>,
    shutting_down: bool,
    next_session: u64,
}

#[derive(Default)]
struct Client {
    /// When the ID was first registered (Unix ms), kept through compaction.
    registered_ms: i64,
    /// The session currently holding this ID online, if any.
    session: Option<u64>,
    /// Last seq assigned to a message for this client (committed or not).
    assigned_seq: u64,
    /// Everything up to here reached its next hop.
    acked: u64,
    /// Committed messages above `acked`, in seq order.
    mailbox: VecDeque<Arc<Message>>,
    /// Messages this client sent, oldest first.
    history: Vec<Arc<Message>>,
    /// Wakes this client's session when its mailbox grows.
    notify: Arc<Notify>,
}

impl Client {
    fn committed_seq(&self) -> u64 {
        self.mailbox.back().map_or(self.acked, |m| m.seq)
    }
}

impl ChatServer {
    /// Opens (or creates) the data directory and rebuilds the state from it.
    /// Fails with [`ChatError::DataDirInUse`] while another server has it
    /// (see [`crate::data_lock`]).
    pub fn open(config: ServerConfig) -> Result<Self, ChatError> {
        let lock = crate::data_lock::lock(&config.data_dir)?;
        let replay = journal::replay(&config.data_dir)?;
        let mut state = State::default();
        for (id, ts) in replay.registered {
            state.clients.entry(id).or_default().registered_ms = ts;
        }
        for (id, seq) in replay.acks {
            let c = state.clients.entry(id).or_default();
            c.acked = c.acked.max(seq);
        }
        let count = replay.messages.len();
        for mut m in replay.messages {
            let to = state.clients.entry(m.to.clone()).or_default();
            to.assigned_seq += 1;
            m.seq = to.assigned_seq;
            let m = Arc::new(m);
            if m.seq > to.acked {
                to.mailbox.push_back(m.clone());
            }
            state
                .clients
                .entry(m.from.clone())
                .or_default()
                .history
                .push(m.clone());
            state.by_id.insert(m.id, m);
        }
        for c in state.clients.values_mut() {
            c.acked = c.acked.min(c.assigned_seq);
        }
        let snapshot: Vec<Record> = state
            .clients
            .iter()
            .flat_map(|(id, c)| {
                let ack = (c.acked > 0).then(|| Record::Ack(id.clone(), c.acked));
                std::iter::once(Record::Register(id.clone(), c.registered_ms)).chain(ack)
            })
            .collect();
        if replay.state_lines > snapshot.len() {
            journal::compact_state(&config.data_dir, &snapshot)?;
        }
        let pending: usize = state.clients.values().map(|c| c.mailbox.len()).sum();
        tracing::info!(
            data_dir = %config.data_dir.display(),
            clients = state.clients.len(),
            messages = count,
            undelivered = pending,
            "state rebuilt from the data directory"
        );

        let state = Arc::new(Mutex::new(state));
        let for_writer = state.clone();
        let journal = journal::start_writer(
            &config.data_dir,
            config.durability,
            Box::new(move |records| commit(&for_writer, records)),
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                journal,
                limits: config.limits,
                data_dir: config.data_dir,
                _lock: lock,
            }),
        })
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self, record: Record) -> oneshot::Receiver<Result<(), Arc<std::io::Error>>> {
        let (done, rx) = oneshot::channel();
        // The writer only stops when the process does; a closed channel
        // shows up as an error on `rx`.
        let _ = self.inner.journal.send(Job { record, done });
        rx
    }

    async fn durable(
        &self,
        rx: oneshot::Receiver<Result<(), Arc<std::io::Error>>>,
    ) -> Result<(), ChatError> {
        let path = &self.inner.data_dir;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ChatError::storage(
                path,
                std::io::Error::new(e.kind(), e.to_string()),
            )),
            Err(_) => Err(ChatError::ShuttingDown),
        }
    }

    /// Registers `raw_id`, or resumes it if it is registered and offline.
    /// Returns whether the ID was new.
    pub async fn register(&self, raw_id: &str) -> Result<bool, ChatError> {
        let id = ClientId::parse(raw_id)?;
        let rx = {
            let mut st = self.lock();
            if st.shutting_down {
                return Err(ChatError::ShuttingDown);
            }
            match st.clients.get(&id) {
                Some(c) if c.session.is_some() => return Err(ChatError::AlreadyOnline(id)),
                Some(_) => return Ok(false),
                None => {}
            }
            let now = now_ms();
            st.clients.entry(id.clone()).or_default().registered_ms = now;
            self.queue(Record::Register(id, now))
        };
        self.durable(rx).await?;
        Ok(true)
    }

    /// Accepts a message: validates it, appends it to `log.txt` and queues it
    /// for its recipient. Returns once it is durable; delivery happens later.
    /// Sender and recipient must both be registered.
    pub async fn send(&self, req: pb::SendRequest) -> Result<Arc<Message>, ChatError> {
        // Validated here, but the IDs the message carries are the registry's
        // own (an Arc clone), not two new allocations per message.
        ClientId::validate(&req.from)?;
        ClientId::validate(&req.to)?;
        let id = MessageId::parse_or_generate(&req.id)?;
        self.inner.limits.check_text(&req.text)?;
        let (message, rx) = {
            let mut st = self.lock();
            if st.shutting_down {
                return Err(ChatError::ShuttingDown);
            }
            if let Some(existing) = st.by_id.get(&id) {
                return Ok(existing.clone());
            }
            let Some((from, _)) = st.clients.get_key_value(req.from.as_str()) else {
                return Err(ChatError::UnknownSender(ClientId::parse(&req.from)?));
            };
            let from = from.clone();
            let Some((to, _)) = st.clients.get_key_value(req.to.as_str()) else {
                return Err(ChatError::UnknownRecipient(ClientId::parse(&req.to)?));
            };
            let to = to.clone();
            let Some(recipient) = st.clients.get_mut(&to) else {
                return Err(ChatError::UnknownRecipient(to));
            };
            let pending = (recipient.assigned_seq - recipient.acked) as usize;
            if pending >= self.inner.limits.max_pending {
                return Err(ChatError::MailboxFull(to, pending));
            }
            recipient.assigned_seq += 1;
            let message = Arc::new(Message {
                id,
                from,
                to,
                text: req.text,
                timestamp_ms: now_ms(),
                seq: recipient.assigned_seq,
            });
            st.by_id.insert(id, message.clone());
            let rx = self.queue(Record::Message(message.clone()));
            (message, rx)
        };
        self.durable(rx).await?;
        Ok(message)
    }

    /// Claims `raw_id` online and returns the session that streams its
    /// mailbox, starting after `after_seq` (or its acknowledged cursor, if
    /// higher). Registers the ID if it is new.
    pub async fn connect(&self, raw_id: &str, after_seq: u64) -> Result<Session, ChatError> {
        let id = ClientId::parse(raw_id)?;
        let (session, rx) = {
            let mut st = self.lock();
            if st.shutting_down {
                return Err(ChatError::ShuttingDown);
            }
            st.next_session += 1;
            let session_no = st.next_session;
            let is_new = !st.clients.contains_key(&id);
            let now = now_ms();
            let c = st.clients.entry(id.clone()).or_default();
            if c.session.is_some() {
                return Err(ChatError::AlreadyOnline(id));
            }
            if is_new {
                c.registered_ms = now;
            }
            c.session = Some(session_no);
            let session = Session {
                server: self.clone(),
                id: id.clone(),
                session_no,
                cursor: after_seq.max(c.acked),
                notify: c.notify.clone(),
            };
            let rx = is_new.then(|| self.queue(Record::Register(id, now)));
            (session, rx)
        };
        if let Some(rx) = rx {
            self.durable(rx).await?;
        }
        tracing::info!(client = %session.id, after = session.cursor, "client online");
        Ok(session)
    }

    /// Records that every message up to `up_to_seq` for `raw_id` reached its
    /// next hop (shown by the client, or confirmed by the broker).
    pub async fn ack(&self, raw_id: &str, up_to_seq: u64) -> Result<(), ChatError> {
        let id = ClientId::parse(raw_id)?;
        let rx = {
            let mut st = self.lock();
            let Some(c) = st.clients.get_mut(&id) else {
                return Err(ChatError::UnknownRecipient(id));
            };
            let up_to = up_to_seq.min(c.committed_seq());
            if up_to <= c.acked {
                return Ok(());
            }
            c.acked = up_to;
            while c.mailbox.front().is_some_and(|m| m.seq <= up_to) {
                c.mailbox.pop_front();
            }
            self.queue(Record::Ack(id, up_to))
        };
        self.durable(rx).await
    }

    /// Every registered client with its online status, sorted by ID.
    pub fn list(&self) -> Vec<ClientInfo> {
        self.lock()
            .clients
            .iter()
            .map(|(id, c)| ClientInfo {
                id: id.clone(),
                online: c.session.is_some(),
            })
            .collect()
    }

    /// Every message sent by `raw_id`, oldest first (empty for an unknown ID).
    pub fn history(&self, raw_id: &str) -> Result<Vec<Arc<Message>>, ChatError> {
        let id = ClientId::parse(raw_id)?;
        Ok(self
            .lock()
            .clients
            .get(&id)
            .map(|c| c.history.clone())
            .unwrap_or_default())
    }

    /// [`Self::history`] as one protobuf reply, refused with
    /// [`ChatError::ReplyTooLarge`] when it would exceed
    /// [`Limits::max_reply_bytes`] (both transports answer it this way).
    pub fn history_reply(&self, raw_id: &str) -> Result<pb::HistoryReply, ChatError> {
        let id = ClientId::parse(raw_id)?;
        let reply = pb::HistoryReply {
            messages: self.history(raw_id)?.iter().map(|m| m.to_proto()).collect(),
        };
        let bytes = prost::Message::encoded_len(&reply);
        let max = self.inner.limits.max_reply_bytes;
        if bytes > max {
            return Err(ChatError::ReplyTooLarge {
                id,
                messages: reply.messages.len(),
                bytes,
                max,
            });
        }
        Ok(reply)
    }

    /// Every committed, unacknowledged message, per recipient in seq order.
    pub fn undelivered(&self) -> Vec<Arc<Message>> {
        self.lock()
            .clients
            .values()
            .flat_map(|c| c.mailbox.iter().cloned())
            .collect()
    }

    /// Refuses new work and ends every session's stream.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        st.shutting_down = true;
        for c in st.clients.values() {
            c.notify.notify_one();
        }
    }
}

/// Makes a durable batch visible: messages enter the sender's history and
/// the recipient's mailbox, and the recipient's session is woken.
fn commit(state: &Mutex<State>, records: &[Record]) {
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    for record in records {
        if let Record::Message(m) = record {
            if let Some(from) = st.clients.get_mut(&m.from) {
                from.history.push(m.clone());
            }
            if let Some(to) = st.clients.get_mut(&m.to) {
                if m.seq > to.acked {
                    to.mailbox.push_back(m.clone());
                }
                to.notify.notify_one();
            }
        }
    }
}

/// A client's claim on its ID being online, and the cursor of what has been
/// handed to it. Dropping it takes the client offline.
pub struct Session {
    server: ChatServer,
    id: ClientId,
    session_no: u64,
    cursor: u64,
    notify: Arc<Notify>,
}

impl Session {
    pub fn client_id(&self) -> &ClientId {
        &self.id
    }

    /// The next messages for this client, waiting until there are some.
    /// `None` once the server shuts down.
    pub async fn next_batch(&mut self) -> Option<Vec<Arc<Message>>> {
        loop {
            {
                let st = self.server.lock();
                if st.shutting_down {
                    return None;
                }
                let c = st.clients.get(&self.id)?;
                let start = c.mailbox.front().map_or(0, |first| {
                    (self.cursor + 1).saturating_sub(first.seq) as usize
                });
                if start < c.mailbox.len() {
                    let batch: Vec<_> = c
                        .mailbox
                        .range(start..)
                        .take(SESSION_BATCH)
                        .cloned()
                        .collect();
                    self.cursor = batch.last().map_or(self.cursor, |m| m.seq);
                    return Some(batch);
                }
            }
            self.notify.notified().await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut st = self.server.lock();
        if let Some(c) = st.clients.get_mut(&self.id)
            && c.session == Some(self.session_no)
        {
            c.session = None;
            tracing::info!(client = %self.id, "client offline");
        }
    }
}

/// The server flags both transports share (`--data-dir`, limits, durability).
#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// Directory for log.txt and the state journal (created if missing).
    #[arg(long, env = "CHAT_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Largest accepted message text, in bytes.
    #[arg(long, env = "CHAT_MAX_TEXT_BYTES", default_value_t = crate::limits::DEFAULT_MAX_TEXT_BYTES)]
    pub max_text_bytes: usize,
    /// Most undelivered messages kept for one recipient.
    #[arg(long, env = "CHAT_MAX_PENDING", default_value_t = crate::limits::DEFAULT_MAX_PENDING)]
    pub max_pending: usize,
    /// Largest reply (a client's history), in encoded bytes; a larger one
    /// is refused with RESOURCE_EXHAUSTED. Keep it under the clients'
    /// decoding limit (4 MiB for gRPC) and the broker's max_message_size.
    #[arg(long, env = "CHAT_MAX_REPLY_BYTES", default_value_t = crate::limits::DEFAULT_MAX_REPLY_BYTES)]
    pub max_reply_bytes: usize,
    /// `os`: answer once written to the OS (survives a server crash);
    /// `fsync`: also flush to disk (survives a machine crash).
    #[arg(long, env = "CHAT_DURABILITY", value_enum, default_value_t = Durability::Os)]
    pub durability: Durability,
}

impl ServerArgs {
    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            data_dir: self.data_dir.clone(),
            limits: Limits {
                max_text_bytes: self.max_text_bytes,
                max_pending: self.max_pending,
                max_reply_bytes: self.max_reply_bytes,
            },
            durability: self.durability,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use std::io::Write as _;

    fn send_req(from: &str, to: &str, text: &str) -> pb::SendRequest {
        pb::SendRequest {
            id: String::new(),
            from: from.into(),
            to: to.into(),
            text: text.into(),
        }
    }

    async fn open(dir: &Path) -> ChatServer {
        ChatServer::open(ServerConfig::new(dir)).unwrap()
    }

    #[tokio::test]
    async fn replay_restores_registrations_histories_and_unacked_mail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path()).await;
            s.register("alice").await.unwrap();
            assert!(s.register("bob").await.unwrap());
            assert!(!s.register("bob").await.unwrap(), "resumed, not new");
            for text in ["one", "two", "three"] {
                s.send(send_req("alice", "bob", text)).await.unwrap();
            }
            s.ack("bob", 1).await.unwrap();
        }
        let s = open(dir.path()).await;
        let ids: Vec<_> = s.list().into_iter().map(|c| c.id.to_string()).collect();
        assert_eq!(ids, ["alice", "bob"]);
        let texts: Vec<_> = s
            .history("alice")
            .unwrap()
            .iter()
            .map(|m| m.text.clone())
            .collect();
        assert_eq!(texts, ["one", "two", "three"]);
        let pending: Vec<_> = s
            .undelivered()
            .iter()
            .map(|m| (m.seq, m.text.clone()))
            .collect();
        assert_eq!(pending, [(2, "two".to_owned()), (3, "three".to_owned())]);

        let mut session = s.connect("bob", 0).await.unwrap();
        let batch = session.next_batch().await.unwrap();
        assert_eq!(batch.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3]);
        // After a restart, seqs continue where they were.
        let m = s.send(send_req("alice", "bob", "four")).await.unwrap();
        assert_eq!(m.seq, 4);
    }

    #[tokio::test]
    async fn messages_share_the_registry_ids() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path()).await;
        s.register("alice").await.unwrap();
        s.register("bob").await.unwrap();
        let m = s.send(send_req("alice", "bob", "hi")).await.unwrap();
        let registry = s.list();
        // The same allocation as the registry's key, not an equal copy.
        assert_eq!(m.from.as_str().as_ptr(), registry[0].id.as_str().as_ptr());
        assert_eq!(m.to.as_str().as_ptr(), registry[1].id.as_str().as_ptr());
        let err = s.send(send_req("alice", "bad id", "hi")).await.unwrap_err();
        assert!(matches!(err, ChatError::InvalidClientId(_)), "{err}");
        let err = s.send(send_req("alice", "carol", "hi")).await.unwrap_err();
        assert!(matches!(err, ChatError::UnknownRecipient(ref id) if id.as_str() == "carol"));
    }

    #[tokio::test]
    async fn the_state_journal_is_compacted_at_start_and_keeps_its_meaning() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join(journal::STATE_FILE);
        {
            let s = open(dir.path()).await;
            s.register("alice").await.unwrap();
            s.register("bob").await.unwrap();
            for i in 1..=10 {
                s.send(send_req("alice", "bob", &format!("m{i}")))
                    .await
                    .unwrap();
                s.ack("bob", i).await.unwrap();
            }
            s.send(send_req("alice", "bob", "unread")).await.unwrap();
        }
        let before = std::fs::read_to_string(&journal).unwrap();
        assert_eq!(before.lines().count(), 12);
        let registered_alice = before.lines().next().unwrap().to_owned();

        let s = open(dir.path()).await;
        let after = std::fs::read_to_string(&journal).unwrap();
        assert_eq!(
            after.lines().collect::<Vec<_>>(),
            [
                registered_alice.as_str(),
                before.lines().nth(1).unwrap(),
                "ack bob 10"
            ]
        );
        let pending: Vec<_> = s.undelivered().iter().map(|m| m.text.clone()).collect();
        assert_eq!(pending, ["unread"]);
        drop(s);
        // Nothing to gain the second time: the file is left as it is.
        let again = open(dir.path()).await;
        assert_eq!(std::fs::read_to_string(&journal).unwrap(), after);
        assert_eq!(again.list().len(), 2);
        assert!(!dir.path().join("state.journal.tmp").exists());
    }

    #[tokio::test]
    async fn a_torn_last_line_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path()).await;
            s.register("alice").await.unwrap();
            s.register("bob").await.unwrap();
            s.send(send_req("alice", "bob", "kept")).await.unwrap();
        }
        let log = dir.path().join(journal::LOG_FILE);
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"2026-11-27T09:00:00.000Z 0193").unwrap();
        drop(f);

        let s = open(dir.path()).await;
        assert_eq!(s.history("alice").unwrap().len(), 1);
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.ends_with('\n'), "file cut back to the last full line");
        s.send(send_req("alice", "bob", "next")).await.unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
    }

    #[tokio::test]
    async fn a_corrupt_line_stops_the_server_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(journal::LOG_FILE),
            "this is not a log line\n",
        )
        .unwrap();
        let err = ChatServer::open(ServerConfig::new(dir.path()))
            .err()
            .expect("refuses to guess");
        let msg = err.to_string();
        assert!(msg.contains("log.txt") && msg.contains("line 1"), "{msg}");
    }

    #[tokio::test]
    async fn mailbox_limit_and_online_claims() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new(dir.path());
        config.limits.max_pending = 2;
        let s = ChatServer::open(config).unwrap();
        s.register("alice").await.unwrap();
        s.register("bob").await.unwrap();
        let err = s.send(send_req("stranger", "bob", "hi")).await.unwrap_err();
        assert!(matches!(err, ChatError::UnknownSender(_)), "{err}");
        s.send(send_req("alice", "bob", "1")).await.unwrap();
        s.send(send_req("alice", "bob", "2")).await.unwrap();
        let err = s.send(send_req("alice", "bob", "3")).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::ResourceExhausted);
        s.ack("bob", 1).await.unwrap();
        s.send(send_req("alice", "bob", "3")).await.unwrap();

        let session = s.connect("bob", 0).await.unwrap();
        assert!(matches!(
            s.connect("bob", 0).await,
            Err(ChatError::AlreadyOnline(_))
        ));
        assert!(matches!(
            s.register("bob").await,
            Err(ChatError::AlreadyOnline(_))
        ));
        drop(session);
        assert!(s.connect("bob", 0).await.is_ok(), "free again once it left");
    }
}
