//! The server's durable record, and the single writer that appends to it.
//!
//! Two append-only files live in the data directory:
//!
//! * `log.txt`: one human-readable line per accepted message (see
//!   [`crate::log_line`]). It is also the source of truth for histories and
//!   mailboxes: a recipient's sequence numbers are the order of its lines.
//! * `state.journal`: registrations (`register <unix_ms> <id> <sha256>`) and
//!   delivery cursors (`ack <id> <seq>`: everything up to `seq` reached its
//!   next hop). `<sha256>` is the hex SHA-256 of the secret that claimed the
//!   ID (see [`crate::identity`]). Journals written before IDs had secrets
//!   have `register <unix_ms> <id>` lines: such an ID is *unclaimed*, and the
//!   next registration with a secret claims it by appending a `register`
//!   line with the same time and the hash (a later line for an ID replaces
//!   the hash of an earlier one).
//!   Only the last ack of a client matters, so at start the file is
//!   rewritten as a snapshot (one registration and one ack per client)
//!   whenever that makes it shorter.
//!
//! All appends go through one writer (`Journal` below says who runs it),
//! which takes every record that is queued, writes each file with one
//! `write` call, optionally `fsync`s (both files at once, unless the batch
//! registers a client), then hands the batch back for the server to
//! publish. That is group
//! commit: under load many sends share one syscall, and a send is answered
//! only after its line reached the OS, so a `kill -9` loses nothing that was
//! accepted. A torn last line (a crash in the middle of a write) was never
//! acknowledged, so replay drops it and truncates the file there.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::ChatError;
use crate::id::ClientId;
use crate::identity::SecretHash;
use crate::log_line;
use crate::message::Message;
use crate::metrics::Metrics;

pub const LOG_FILE: &str = "log.txt";
pub const STATE_FILE: &str = "state.journal";

/// How hard an append is pushed towards the disk before a request is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Written to the OS (survives a crash of the server process).
    #[default]
    Os,
    /// Also `fsync`ed (survives a crash of the machine; slower).
    Fsync,
}

/// One thing to make durable.
#[derive(Debug)]
pub enum Record {
    Message(Arc<Message>),
    /// A registration (or the claim of an unclaimed ID): ID, registration
    /// time, hash of the secret (`None` only when compacting an unclaimed one).
    Register(ClientId, i64, Option<SecretHash>),
    Ack(ClientId, u64),
}

struct Job {
    record: Record,
    done: oneshot::Sender<Written>,
}

/// What replay found in `state.journal`.
#[derive(Debug, Default)]
pub struct Replay {
    /// Registrations (ID, time, secret hash) in journal order; an ID may
    /// appear twice (registered unclaimed, then claimed).
    pub registered: Vec<(ClientId, i64, Option<SecretHash>)>,
    /// Lines in `state.journal` (to decide whether compacting it pays).
    pub state_lines: usize,
    /// Every ack in journal order: client, seq, and the line it is on.
    pub acks: Vec<(ClientId, u64, usize)>,
    /// Every logged message in log order (seq still 0). Filled by
    /// [`replay`] only; the server streams `log.txt` with [`scan_log`].
    pub messages: Vec<Message>,
}

/// Where a line of `log.txt` is: its first byte, its length without the
/// line end, and its 1-based line number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    pub offset: u64,
    pub len: usize,
    pub line: usize,
}

/// Reads both files back, every message into memory (for tools and tests;
/// the server streams `log.txt` instead). Creates the directory and files
/// when missing.
pub fn replay(dir: &Path) -> Result<Replay, ChatError> {
    let mut out = read_state(dir)?;
    let mut messages = Vec::new();
    scan_log(dir, |_, _, m| {
        messages.push(m);
        Ok(())
    })?;
    out.messages = messages;
    Ok(out)
}

/// Reads `state.journal` (registrations and acks). Creates the directory
/// when missing.
pub fn read_state(dir: &Path) -> Result<Replay, ChatError> {
    std::fs::create_dir_all(dir).map_err(|e| ChatError::storage(dir, e))?;
    let mut out = Replay::default();

    let state = dir.join(STATE_FILE);
    let state_lines = read_complete_lines(&state)?;
    out.state_lines = state_lines.len();
    for (n, line) in state_lines.into_iter().enumerate() {
        let mut parts = line.split(' ');
        let fields = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        );
        let parsed = match fields {
            (Some("register"), Some(ts), Some(id), hash, None) => {
                let hash = match hash {
                    None => Some(None),
                    Some(h) => SecretHash::from_hex(h).map(Some),
                };
                match (ClientId::parse(id), ts.parse::<i64>(), hash) {
                    (Ok(id), Ok(ts), Some(hash)) => {
                        out.registered.push((id, ts, hash));
                        Some(())
                    }
                    _ => None,
                }
            }
            (Some("ack"), Some(id), Some(seq), None, None) => {
                match (ClientId::parse(id), seq.parse::<u64>()) {
                    (Ok(id), Ok(seq)) => {
                        out.acks.push((id, seq, n + 1));
                        Some(())
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if parsed.is_none() {
            return Err(corrupt(&state, n + 1, &line));
        }
    }
    Ok(out)
}

/// Streams `log.txt`: calls `each` with the place, the text and the parsed
/// message of every complete line, in order, without holding the file in
/// memory. A torn last line (no newline: a crash in the middle of a write,
/// never acknowledged) is cut off the file. A line that is not UTF-8 or not
/// a message, or that `each` refuses, stops the scan with an error naming
/// the file and the line. Returns the file's length after the scan.
pub fn scan_log(
    dir: &Path,
    mut each: impl FnMut(Located, &str, Message) -> Result<(), ChatError>,
) -> Result<u64, ChatError> {
    use std::io::BufRead as _;
    std::fs::create_dir_all(dir).map_err(|e| ChatError::storage(dir, e))?;
    let path = dir.join(LOG_FILE);
    let err = |e| ChatError::storage(&path, e);
    let file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(err(e)),
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 16, &file);
    let mut buf = Vec::new();
    let mut offset = 0u64;
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(err)?;
        if n == 0 {
            return Ok(offset);
        }
        let Some(line) = buf.strip_suffix(b"\n") else {
            tracing::warn!(
                file = %path.display(),
                bytes = n,
                "dropping a torn last line left by a crash (it was never acknowledged)"
            );
            drop(reader);
            file.set_len(offset).map_err(err)?;
            return Ok(offset);
        };
        line_no += 1;
        // A `\r` before the newline is tolerated (the server never writes
        // one: it escapes `\r`).
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|e| {
            corrupt_because(
                &path,
                line_no,
                &String::from_utf8_lossy(line),
                &format!("not valid UTF-8 at byte {}", e.valid_up_to()),
            )
        })?;
        let message = log_line::parse_line(text)
            .map_err(|why| corrupt_because(&path, line_no, text, &why.to_string()))?;
        let at = Located {
            offset,
            len: line.len(),
            line: line_no,
        };
        each(at, text, message)?;
        offset += n as u64;
    }
}

/// Reads back the `log.txt` line at `at` (a place [`scan_log`] or the
/// writer reported), from `file` opened on it.
pub fn read_logged(file: &File, path: &Path, at: u64, len: usize) -> Result<Message, ChatError> {
    use std::os::unix::fs::FileExt as _;
    let mut bytes = vec![0; len];
    file.read_exact_at(&mut bytes, at)
        .map_err(|e| ChatError::storage(path, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        ChatError::storage(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        )
    })?;
    log_line::parse_line(text).map_err(|why| {
        ChatError::storage(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("at byte {at}: {why} (was log.txt changed while the server ran?)"),
            ),
        )
    })
}

fn corrupt(path: &Path, line_no: usize, line: &str) -> ChatError {
    corrupt_because(path, line_no, line, "not a valid record")
}

pub(crate) fn corrupt_because(path: &Path, line_no: usize, line: &str, why: &str) -> ChatError {
    ChatError::storage(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "line {line_no} ({:?}): {why}; the server will not guess. \
                 Fix or remove that line, or start with another --data-dir",
                line.chars().take(80).collect::<String>()
            ),
        ),
    )
}

/// Every newline-terminated line of `path`; a trailing partial line is cut off
/// the file (it was never acknowledged).
fn read_complete_lines(path: &Path) -> Result<Vec<String>, ChatError> {
    let err = |e| ChatError::storage(path, e);
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(e)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(err)?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(
            file = %path.display(),
            bytes = bytes.len() - complete,
            "dropping a torn last line left by a crash (it was never acknowledged)"
        );
        file.set_len(complete as u64).map_err(err)?;
        file.seek(SeekFrom::End(0)).map_err(err)?;
    }
    // Split by hand rather than with `BufRead::lines`, whose UTF-8 error
    // would not say which line is bad. A `\r` before the newline is dropped,
    // as `lines` did (the server never writes one: it escapes `\r`).
    let mut lines = Vec::new();
    let Some(body) = bytes[..complete].strip_suffix(b"\n") else {
        return Ok(lines);
    };
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match std::str::from_utf8(line) {
            Ok(text) => lines.push(text.to_owned()),
            Err(e) => {
                return Err(corrupt_because(
                    path,
                    n + 1,
                    &String::from_utf8_lossy(line),
                    &format!("not valid UTF-8 at byte {}", e.valid_up_to()),
                ));
            }
        }
    }
    Ok(lines)
}

/// Called by the writer with each durable batch, in order, before the
/// batch's senders are answered, with where in `log.txt` each message
/// record's line went (offset and length, in the order of the messages).
pub(crate) type Publish = Box<dyn FnMut(&[Record], &[(u64, usize)]) + Send>;

/// The most records written at once (one `write` per file).
const MAX_BATCH: usize = 1024;

/// What a queued record's waiter hears: written (and synced), or why not.
pub(crate) type Written = Result<(), Arc<std::io::Error>>;

/// The journal: records queued in the order the server accepted them, and
/// the one writer that appends them.
///
/// Who writes depends on the durability. With `os`, a write only reaches
/// the OS (microseconds), so the task that waits for its record writes
/// everything queued itself, if no other task is writing ("flat
/// combining"): no hand-off to a thread and back. It first yields once,
/// so that the tasks that are ready queue their records and one write
/// takes them all (group commit). With `fsync`, a write
/// blocks for a disk flush, too long for an async worker, so a thread
/// writes every batch and the waiters sleep.
pub(crate) struct Journal {
    queue: Mutex<Vec<Job>>,
    writer: Mutex<Writer>,
    /// Waiters write (`os`) rather than the thread (`fsync`).
    inline: bool,
    /// Wakes the journal thread: after every record with `fsync`; with
    /// `os`, only for a record whose waiter went away before writing it.
    wake: std::sync::mpsc::Sender<()>,
}

/// A record queued to the journal; [`Queued::wait`] until it is written.
/// Dropping it unawaited still gets the record written.
pub(crate) struct Queued {
    rx: Option<oneshot::Receiver<Written>>,
    journal: Arc<Journal>,
}

/// Why a [`Queued`] record was not written.
pub(crate) enum NotWritten {
    /// The append failed (and every later one will).
    Failed(Arc<std::io::Error>),
    /// The journal went away (the server is shutting down).
    Closed,
}

/// Locks the queue, ignoring poisoning: a push or a drain cannot leave it
/// half-done. (A poisoned writer is handled in [`Journal::combine`].)
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Journal {
    /// Opens the files in `dir` and starts the journal's thread.
    pub(crate) fn start(
        dir: &Path,
        durability: Durability,
        metrics: Arc<Metrics>,
        publish: Publish,
    ) -> Result<Arc<Self>, ChatError> {
        let files = Files::open(dir, durability)?;
        let (wake, woken) = std::sync::mpsc::channel::<()>();
        let journal = Arc::new(Self {
            queue: Mutex::new(Vec::new()),
            writer: Mutex::new(Writer {
                files,
                metrics,
                publish,
                batch: Vec::new(),
                log_buf: String::new(),
                state_buf: String::new(),
                places: Vec::new(),
                failed: None,
            }),
            inline: durability == Durability::Os,
            wake,
        });
        // The thread holds the journal weakly: it stops once the server
        // (and every pending record) dropped it, which drops `wake`.
        let weak = Arc::downgrade(&journal);
        std::thread::Builder::new()
            .name("chat-journal".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    while woken.try_recv().is_ok() {}
                    let Some(journal) = weak.upgrade() else {
                        return;
                    };
                    journal.combine();
                }
            })
            .map_err(|e| ChatError::storage(dir, e))?;
        Ok(journal)
    }

    /// Queues `record` after every record queued before it. Call it under
    /// the lock that decides that order (the server's state lock); it
    /// takes no lock of the writer's.
    pub(crate) fn push(self: &Arc<Self>, record: Record) -> Queued {
        let (done, rx) = oneshot::channel();
        lock(&self.queue).push(Job { record, done });
        if !self.inline {
            // The thread only stops once the journal is gone.
            let _ = self.wake.send(());
        }
        Queued {
            rx: Some(rx),
            journal: self.clone(),
        }
    }

    /// Writes everything queued, unless another caller is writing: that
    /// one looks at the queue again after it stopped writing, so nothing
    /// queued before this call is left behind.
    fn combine(&self) {
        loop {
            let mut writer = match self.writer.try_lock() {
                Ok(w) => w,
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    // A batch panicked half-way: what it left is unknown,
                    // so nothing more is written (as after a failed write).
                    let mut w = p.into_inner();
                    w.batch.clear();
                    w.failed.get_or_insert_with(|| {
                        Arc::new(std::io::Error::other(
                            "the journal's writer panicked; refusing all further writes",
                        ))
                    });
                    self.writer.clear_poison();
                    w
                }
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            loop {
                let writer = &mut *writer;
                {
                    let mut queue = lock(&self.queue);
                    if queue.len() <= MAX_BATCH {
                        std::mem::swap(&mut *queue, &mut writer.batch);
                    } else {
                        writer.batch.extend(queue.drain(..MAX_BATCH));
                    }
                }
                if writer.batch.is_empty() {
                    break;
                }
                writer.commit();
            }
            drop(writer);
            if lock(&self.queue).is_empty() {
                return;
            }
        }
    }
}

impl Drop for Journal {
    /// Writes what is still queued (records whose waiters went away), as
    /// the last thing the server does with its files.
    fn drop(&mut self) {
        self.combine();
    }
}

impl Queued {
    /// Waits until the record is in its file (and, with `fsync`, on disk).
    pub(crate) async fn wait(mut self) -> Result<(), NotWritten> {
        if self.journal.inline {
            // Let the tasks that are ready queue their records first, so
            // that one write takes them all (a task that polls many sends
            // at once, or the requests of one busy connection); without
            // this each record went in a write of its own.
            tokio::task::yield_now().await;
            self.journal.combine();
        }
        let rx = self.rx.take().expect("a pending record is waited for once");
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NotWritten::Failed(e)),
            Err(_) => Err(NotWritten::Closed),
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        // Not waited for and not written yet (a request cancelled between
        // accepting and waiting): with `os` nobody may come to write it.
        if let Some(rx) = &mut self.rx
            && self.journal.inline
            && matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
        {
            let _ = self.journal.wake.send(());
        }
    }
}

/// The writer's state: the files, and buffers reused by every batch.
struct Writer {
    files: Files,
    metrics: Arc<Metrics>,
    publish: Publish,
    batch: Vec<Job>,
    log_buf: String,
    state_buf: String,
    /// Where each message of the batch goes in `log.txt`.
    places: Vec<(u64, usize)>,
    /// After a failed append nothing more is written: accepting later
    /// messages would give them sequence numbers that replay cannot
    /// reproduce. The server keeps answering, with the storage error.
    failed: Option<Arc<std::io::Error>>,
}

impl Writer {
    /// Writes the batch, then publishes it and answers its senders (or
    /// answers them all with the error).
    fn commit(&mut self) {
        if let Some(e) = &self.failed {
            for job in self.batch.drain(..) {
                let _ = job.done.send(Err(e.clone()));
            }
            return;
        }
        let registers = self.encode();
        let started = std::time::Instant::now();
        let result = self.files.append(&self.state_buf, &self.log_buf, registers);
        self.metrics
            .journal_append
            .observe(started.elapsed().as_secs_f64());
        self.metrics.journal_batch.observe(self.batch.len() as f64);
        match result {
            Ok(()) => {
                self.files.log_len += self.log_buf.len() as u64;
                let (records, dones): (Vec<_>, Vec<_>) =
                    self.batch.drain(..).map(|j| (j.record, j.done)).unzip();
                (self.publish)(&records, &self.places);
                for done in dones {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot append to the data directory; refusing all further writes");
                let e = Arc::new(e);
                for job in self.batch.drain(..) {
                    let _ = job.done.send(Err(e.clone()));
                }
                self.failed = Some(e);
            }
        }
    }

    /// Renders the batch into the two buffers and notes where each message
    /// goes in `log.txt`. Whether the batch holds a registration.
    fn encode(&mut self) -> bool {
        self.log_buf.clear();
        self.state_buf.clear();
        self.places.clear();
        let mut registers = false;
        for job in &self.batch {
            match &job.record {
                Record::Message(m) => {
                    let start = self.log_buf.len();
                    log_line::write_line(&mut self.log_buf, m);
                    // Without the newline, as `scan_log` reports it.
                    let len = self.log_buf.len() - start - 1;
                    self.places.push((self.files.log_len + start as u64, len));
                }
                other => {
                    registers |= matches!(other, Record::Register(..));
                    write_state_line(&mut self.state_buf, other);
                }
            }
        }
        registers
    }
}

/// The two append-only files, and how far `log.txt` goes.
struct Files {
    log: File,
    state: Arc<File>,
    log_len: u64,
    /// Present with `--durability fsync` only: a thread that syncs
    /// `state.journal` while the writer syncs `log.txt`, so that a batch
    /// waits for one disk flush, not two.
    state_sync: Option<Syncer>,
}

impl Files {
    fn open(dir: &Path, durability: Durability) -> Result<Self, ChatError> {
        let open = |name: &str| -> Result<(File, PathBuf), ChatError> {
            let path = dir.join(name);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| ChatError::storage(&path, e))?;
            Ok((f, path))
        };
        let (log, log_path) = open(LOG_FILE)?;
        let (state, _) = open(STATE_FILE)?;
        let log_len = log
            .metadata()
            .map_err(|e| ChatError::storage(&log_path, e))?
            .len();
        let state = Arc::new(state);
        let state_sync = match durability {
            Durability::Fsync => {
                Some(Syncer::start(state.clone()).map_err(|e| ChatError::storage(dir, e))?)
            }
            Durability::Os => None,
        };
        Ok(Self {
            log,
            state,
            log_len,
            state_sync,
        })
    }

    /// Appends one batch: each file with one `write`, then (with `fsync`)
    /// both synced. A registration must be durable before any message
    /// (from the client it registers) reaches `log.txt`, so a batch with
    /// one syncs `state.journal` first. Acks alone may be synced beside
    /// `log.txt`: an ack only ever names messages of earlier batches,
    /// already durable (messages are delivered only once durable), and an
    /// ack lost to a crash only means a redelivery.
    fn append(&mut self, state_buf: &str, log_buf: &str, registers: bool) -> std::io::Result<()> {
        let state_dirty = !state_buf.is_empty();
        let log_dirty = !log_buf.is_empty();
        if state_dirty {
            (&*self.state).write_all(state_buf.as_bytes())?;
        }
        let fsync = self.state_sync.as_ref();
        if fsync.is_some() && registers {
            self.state.sync_data()?;
        }
        if log_dirty {
            self.log.write_all(log_buf.as_bytes())?;
        }
        let Some(syncer) = fsync else {
            return Ok(());
        };
        let log = &self.log;
        match (state_dirty && !registers, log_dirty) {
            (true, true) => syncer.sync_beside(|| log.sync_data()),
            (true, false) => self.state.sync_data(),
            (false, true) => log.sync_data(),
            (false, false) => Ok(()),
        }
    }
}

/// A thread that `fsync`s one file on request.
struct Syncer {
    go: std::sync::mpsc::SyncSender<()>,
    done: std::sync::mpsc::Receiver<std::io::Result<()>>,
}

impl Syncer {
    fn start(file: Arc<File>) -> std::io::Result<Self> {
        let (go, go_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("chat-journal-sync".into())
            .spawn(move || {
                while go_rx.recv().is_ok() {
                    if done_tx.send(file.sync_data()).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self { go, done })
    }

    /// Syncs the file while `other` runs on this thread; both results.
    fn sync_beside(&self, other: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<()> {
        let stopped = || std::io::Error::other("the journal's sync thread stopped");
        self.go.send(()).map_err(|_| stopped())?;
        let mine = other();
        let theirs = self.done.recv().unwrap_or_else(|_| Err(stopped()));
        mine.and(theirs)
    }
}

/// Appends the `state.journal` line of a registration or an ack.
fn write_state_line(out: &mut String, record: &Record) {
    use std::fmt::Write as _;
    let _ = match record {
        Record::Register(id, ts, Some(hash)) => {
            writeln!(out, "register {ts} {id} {}", hash.to_hex())
        }
        Record::Register(id, ts, None) => writeln!(out, "register {ts} {id}"),
        Record::Ack(id, seq) => writeln!(out, "ack {id} {seq}"),
        Record::Message(_) => Ok(()),
    };
}

/// Replaces `state.journal` with `snapshot` (one registration and at most
/// one ack per client), so that the acks of a long run do not make every
/// later start slower. Atomic: written to a temporary file, synced, then
/// renamed over the old one; a crash leaves either file whole.
pub fn compact_state(dir: &Path, snapshot: &[Record]) -> Result<(), ChatError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let err = |e| ChatError::storage(&path, e);
    let mut buf = String::new();
    for record in snapshot {
        write_state_line(&mut buf, record);
    }
    let mut file = File::create(&tmp).map_err(err)?;
    file.write_all(buf.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::MessageId;
    use std::sync::Mutex;

    fn message(n: u64) -> Record {
        Record::Message(Arc::new(Message {
            id: MessageId(uuid::Uuid::from_u128(n.into())),
            from: ClientId::parse("alice").unwrap(),
            to: ClientId::parse("bob").unwrap(),
            text: format!("m{n}"),
            timestamp_ms: 1_764_237_000_000,
            seq: n,
        }))
    }

    /// Starts a journal whose publish notes each published message's text.
    fn journal(dir: &Path, durability: Durability) -> (Arc<Journal>, Arc<Mutex<Vec<String>>>) {
        let published = Arc::new(Mutex::new(Vec::new()));
        let seen = published.clone();
        let publish: Publish = Box::new(move |records, _| {
            for r in records {
                if let Record::Message(m) = r {
                    seen.lock().unwrap().push(m.text.clone());
                }
            }
        });
        let journal = Journal::start(dir, durability, Arc::new(Metrics::new()), publish).unwrap();
        (journal, published)
    }

    /// With either durability the writer writes and publishes jobs in the
    /// order they were queued, from many tasks at once, and answers every
    /// job (with `fsync`, acks-only state batches sync beside the log).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_are_written_and_published_in_queue_order() {
        for durability in [Durability::Os, Durability::Fsync] {
            let dir = tempfile::tempdir().unwrap();
            let (journal, published) = journal(dir.path(), durability);
            // Queued under one lock, as the server does under its state lock.
            let order = Arc::new(Mutex::new(0u64));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..8 {
                let (journal, order) = (journal.clone(), order.clone());
                tasks.spawn(async move {
                    for _ in 0..50 {
                        let pending: Vec<Queued> = {
                            let mut n = order.lock().unwrap();
                            *n += 1;
                            let mut records = vec![message(*n)];
                            if *n % 10 == 0 {
                                let bob = ClientId::parse("bob").unwrap();
                                records.push(Record::Ack(bob, *n - 5));
                            }
                            records.into_iter().map(|r| journal.push(r)).collect()
                        };
                        for p in pending {
                            assert!(p.wait().await.is_ok());
                        }
                    }
                });
            }
            while let Some(t) = tasks.join_next().await {
                t.unwrap();
            }
            let expected: Vec<String> = (1..=400).map(|n| format!("m{n}")).collect();
            assert_eq!(*published.lock().unwrap(), expected, "{durability:?}");
            let logged: Vec<String> = replay(dir.path())
                .unwrap()
                .messages
                .into_iter()
                .map(|m| m.text)
                .collect();
            assert_eq!(logged, expected, "{durability:?}");
            let acks: Vec<u64> = read_state(dir.path())
                .unwrap()
                .acks
                .into_iter()
                .map(|(_, seq, _)| seq)
                .collect();
            assert_eq!(acks, (1..=40).map(|k| k * 10 - 5).collect::<Vec<_>>());
        }
    }

    /// With `os`, records queued by sends that one task polls together
    /// (as a batch request does) go to the files in one write, not one
    /// write each: the waiting task lets the others queue first.
    #[tokio::test(flavor = "current_thread")]
    async fn records_waited_for_together_share_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let publish: Publish = Box::new(move |records, _| {
            seen.lock().unwrap().push(records.len());
        });
        let journal = Journal::start(
            dir.path(),
            Durability::Os,
            Arc::new(Metrics::new()),
            publish,
        )
        .unwrap();
        let sends = (1..=20).map(|n| {
            let journal = journal.clone();
            async move { journal.push(message(n)).wait().await.is_ok() }
        });
        let written = futures::future::join_all(sends).await;
        assert!(written.iter().all(|ok| *ok));
        assert_eq!(*batches.lock().unwrap(), [20]);
    }

    /// A record whose waiter went away before waiting (a cancelled
    /// request) is still written and published, with either durability,
    /// though nothing is queued after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_nobody_waits_for_is_written_all_the_same() {
        for durability in [Durability::Os, Durability::Fsync] {
            let dir = tempfile::tempdir().unwrap();
            let (journal, published) = journal(dir.path(), durability);
            drop(journal.push(message(1)));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while published.lock().unwrap().is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{durability:?}: the record was never written"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(*published.lock().unwrap(), ["m1"], "{durability:?}");
            let logged = replay(dir.path()).unwrap().messages;
            assert_eq!(logged.len(), 1, "{durability:?}");
            // The next record is written after it, and waited for.
            assert!(journal.push(message(2)).wait().await.is_ok());
            assert_eq!(*published.lock().unwrap(), ["m1", "m2"], "{durability:?}");
        }
    }

    /// A record still queued when the server drops the journal is
    /// written all the same, and the journal does go (its thread does not
    /// keep it: a test process runs many servers).
    #[test]
    fn what_is_queued_when_the_journal_goes_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = journal(dir.path(), Durability::Os);
        let weak = Arc::downgrade(&journal);
        drop(journal.push(message(1)));
        drop(journal);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while weak.strong_count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the journal was never dropped"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(replay(dir.path()).unwrap().messages.len(), 1);
    }
}
