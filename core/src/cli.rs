//! The command-line front-end, written once for every [`ChatClient`].
//!
//! `grpc-client` and `amqp-client` only add their connection flag and call
//! [`run`]. This module is the only place in the libraries that writes to
//! stdout: incoming messages, acceptances, lists and histories go there (one
//! JSON object per line with `--json`); diagnostics go to stderr.
//!
//! Interactive use on a terminal goes through rustyline, whose external
//! printer redraws the prompt and the half-typed line after each incoming
//! message, so arrivals never garble what the user is typing. The line
//! editor starts after the user's first line (Enter is enough): until then
//! output is plain lines, so a client on a TTY nobody has typed into yet
//! (a container under `docker compose up`) logs cleanly, without prompt
//! redraws. When stdin is
//! not a terminal (a pipe, a container without TTY) lines are read plainly
//! and the client keeps printing arrivals after input ends, until `/quit`,
//! SIGINT or SIGTERM.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::client::{ChatClient, ClientError, ConnectionState, Delivery, Incoming, IncomingEvent};
use crate::error::{ChatError, ErrorCode};
use crate::id::ClientId;
use crate::identity::Secret;
use crate::message::{ClientInfo, Message, format_timestamp};
use crate::state_file::{self, StateFile};

/// Pause between the lines of the `--demo` conversation, so that a person
/// watching `docker compose up` can follow it.
const DEMO_PAUSE: Duration = Duration::from_millis(700);
/// How long `--demo` waits for its peer to register before giving up.
const DEMO_PEER_WAIT: Duration = Duration::from_secs(120);

/// The flags and subcommands every chat client shares.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// Your client ID: 1-32 characters of A-Z, a-z, 0-9, '_' or '-'.
    /// Without it a unique ID is generated and printed.
    #[arg(long, env = "CHAT_ID", global = true)]
    pub id: Option<String>,

    /// The secret that proves your ID (1-128 visible ASCII characters). The
    /// first registration of an ID claims it with its secret. Without this
    /// flag a secret is generated once and kept in your state file
    /// ($XDG_STATE_HOME/chatbench/ or ~/.local/state/chatbench/).
    #[arg(long, env = "CHAT_SECRET", hide_env_values = true, global = true)]
    pub secret: Option<String>,

    /// Print every event as one JSON object per line on stdout.
    #[arg(long, env = "CHAT_JSON", global = true)]
    pub json: bool,

    /// Once PEER is registered, send it a short scripted conversation, then
    /// carry on as an ordinary interactive client.
    #[arg(long, env = "CHAT_DEMO", value_name = "PEER")]
    pub demo: Option<String>,

    /// How long one-shot commands keep retrying an unreachable server
    /// before giving up, in seconds (interactive use retries forever).
    #[arg(
        long,
        env = "CHAT_CONNECT_TIMEOUT",
        default_value_t = 15,
        global = true
    )]
    pub connect_timeout: u64,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-shot commands for scripts. Without one, the client is interactive.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Send one message; exits once the server has accepted it.
    Send {
        /// Recipient client ID.
        to: String,
        /// Message text (several words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// List every registered client with its online status.
    List,
    /// Show every message you have sent, oldest first.
    History,
    /// Go online and print incoming messages.
    Listen {
        /// Exit after this many messages.
        #[arg(long, env = "CHAT_LISTEN_COUNT")]
        count: Option<usize>,
        /// Exit after this many seconds (with an error if --count was not reached).
        #[arg(long, env = "CHAT_LISTEN_TIMEOUT")]
        timeout: Option<u64>,
    },
}

const HELP: &str = "\
commands:
  /msg <id> <text>   send <text> to client <id>
  <text>             send to the last recipient
  /list              list clients and whether they are online
  /history           messages you have sent
  /help              this help
  /quit              leave (Ctrl-D and Ctrl-C too)";

/// Runs the client described by `args` against `config`. `endpoint` names
/// the server or broker in messages; `state_key` names the chat the state
/// file is for (the endpoint, plus anything else that tells chats apart).
pub async fn run<C: ChatClient>(
    config: C::Config,
    endpoint: String,
    state_key: String,
    args: ClientArgs,
) -> ExitCode {
    let interactive_tty = args.command.is_none()
        && !args.json
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal();
    let out = Output::new(args.json);

    let id = match &args.id {
        Some(raw) => match ClientId::parse(raw) {
            Ok(id) => id,
            Err(e) => {
                out.error(&ClientError::from(e));
                return ExitCode::from(2);
            }
        },
        None => {
            let id = ClientId::generate();
            out.emit(&Event::Info {
                message: format!("no --id given; you are {id}"),
            });
            id
        }
    };

    let given = match args.secret.as_deref().map(Secret::parse) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            out.error(&ClientError::from(e));
            return ExitCode::from(2);
        }
    };
    let opened = state_file::default_dir()
        .and_then(|dir| StateFile::open(&dir, &state_key, &id, given.as_ref()));
    let (mut state, secret) = match (opened, given) {
        (Ok((file, secret)), _) => (Keeper::new(Some(file), out.clone()), secret),
        // The user keeps the secret; only the last shown seq is not kept.
        (Err(e), Some(secret)) => {
            out.notice(&format!("{e}; carrying on without it"));
            (Keeper::new(None, out.clone()), secret)
        }
        (Err(e), None) => {
            out.error_text(&e.to_string());
            return ExitCode::FAILURE;
        }
    };

    let deadline = match args.command {
        None | Some(Command::Listen { .. }) => None,
        _ => Some(Instant::now() + Duration::from_secs(args.connect_timeout)),
    };
    let client = match retry(&out, &endpoint, deadline, || {
        C::connect(&config, id.clone(), secret.clone())
    })
    .await
    {
        Ok(c) => c,
        Err(e) => {
            out.error(&e);
            return ExitCode::FAILURE;
        }
    };

    let result = match args.command {
        Some(Command::Send { to, text }) => {
            one_shot_send(&client, &out, &to, &text.join(" ")).await
        }
        Some(Command::List) => client.list_clients().await.map(|c| out.clients(&c)),
        Some(Command::History) => client.history().await.map(|h| out.history(&id, &h)),
        Some(Command::Listen { count, timeout }) => {
            listen(
                &client,
                &out,
                &endpoint,
                &mut state,
                count,
                timeout.map(Duration::from_secs),
            )
            .await
        }
        None => {
            interactive(
                client,
                out.clone(),
                &mut state,
                interactive_tty,
                &endpoint,
                args.demo,
            )
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out.error(&e);
            if e.code() == Some(ErrorCode::Unauthenticated)
                && let Some(path) = state.path()
            {
                out.notice(&format!(
                    "the secret this client used for {id} is kept in {}",
                    path.display()
                ));
            }
            ExitCode::FAILURE
        }
    }
}

/// The state file as the CLI uses it: the last shown seq is written before
/// the acknowledgements for it go out. A file that cannot be written is
/// reported once; the client carries on (the seq is then simply not kept).
struct Keeper {
    file: Option<StateFile>,
    out: Output,
    failed: bool,
}

impl Keeper {
    fn new(file: Option<StateFile>, out: Output) -> Self {
        Self {
            file,
            out,
            failed: false,
        }
    }

    fn path(&self) -> Option<&std::path::Path> {
        self.file.as_ref().map(StateFile::path)
    }

    fn last_shown_seq(&self) -> u64 {
        self.file.as_ref().map_or(0, StateFile::last_shown_seq)
    }

    fn shown(&mut self, seq: u64) {
        if let Some(file) = &mut self.file
            && let Err(e) = file.shown(seq)
            && !std::mem::replace(&mut self.failed, true)
        {
            self.out.notice(&format!(
                "{e}; messages shown from now on may be shown again after a crash"
            ));
        }
    }
}

/// Shows `first` and whatever else is waiting already (at most `limit` in
/// all), records the last seq in the state file, and only then
/// acknowledges them: one file write per batch, and a crash between showing
/// and acknowledging never shows them again. Returns how many were shown
/// and an event that came after them, to be handled by the caller.
fn show_batch(
    out: &Output,
    state: &mut Keeper,
    incoming: &mut Incoming,
    first: Delivery,
    limit: usize,
) -> (usize, Option<IncomingEvent>) {
    let mut batch = vec![first];
    let mut after = None;
    while batch.len() < limit {
        match incoming.try_recv() {
            Some(IncomingEvent::Message(d)) => batch.push(d),
            Some(other) => {
                after = Some(other);
                break;
            }
            None => break,
        }
    }
    for d in &batch {
        out.message(&d.message);
    }
    if let Some(seq) = batch.iter().map(|d| d.message.seq).max() {
        state.shown(seq);
    }
    let n = batch.len();
    for d in batch {
        d.ack();
    }
    (n, after)
}

/// Retries `attempt` while it fails transiently, saying so, until `deadline`.
async fn retry<T, F, Fut>(
    out: &Output,
    endpoint: &str,
    deadline: Option<Instant>,
    mut attempt: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut backoff = Backoff::new();
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                if deadline.is_some_and(|d| Instant::now() + delay > d) {
                    return Err(e);
                }
                out.notice(&format!(
                    "{e}; is the server at {endpoint} running? retrying in {:.1}s",
                    delay.as_secs_f32()
                ));
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn one_shot_send<C: ChatClient>(
    client: &C,
    out: &Output,
    to: &str,
    text: &str,
) -> Result<(), ClientError> {
    let to = ClientId::parse(to)?;
    // Sending needs a registered sender; an ID that is online elsewhere (the
    // same user's interactive client) is registered already.
    match client.register().await {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => {}
        Err(e) => return Err(e),
    }
    let accepted = client.send(&to, text).await?;
    out.accepted(&to, &accepted);
    Ok(())
}

async fn listen<C: ChatClient>(
    client: &C,
    out: &Output,
    endpoint: &str,
    state: &mut Keeper,
    count: Option<usize>,
    timeout: Option<Duration>,
) -> Result<(), ClientError> {
    let after = state.last_shown_seq();
    let mut incoming = retry(out, endpoint, None, || client.join_after(after)).await?;
    out.emit(&Event::Joined {
        id: client.id().as_str(),
    });
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut seen = 0usize;
    let mut leftover = None;
    while count.is_none_or(|c| seen < c) {
        let next = match leftover.take() {
            Some(ev) => Some(ev),
            None => match deadline {
                Some(d) => match tokio::time::timeout_at(d, incoming.recv()).await {
                    Ok(ev) => ev,
                    Err(_) => break,
                },
                None => incoming.recv().await,
            },
        };
        match next {
            Some(IncomingEvent::Message(d)) => {
                let limit = count.map_or(usize::MAX, |c| c - seen);
                let (n, after) = show_batch(out, state, &mut incoming, d, limit);
                seen += n;
                leftover = after;
            }
            Some(IncomingEvent::State(s)) => out.state(&s),
            None => break,
        }
    }
    incoming.close().await;
    match count {
        Some(c) if seen < c => Err(ClientError::Local(format!(
            "listen ended after {seen} of {c} messages"
        ))),
        _ => Ok(()),
    }
}

/// What the input side asks the main loop to do.
enum Input {
    Line(String),
    Eof,
}

async fn interactive<C: ChatClient>(
    client: C,
    out: Output,
    state: &mut Keeper,
    tty: bool,
    endpoint: &str,
    demo: Option<String>,
) -> Result<(), ClientError> {
    let after = state.last_shown_seq();
    let mut incoming: Incoming = retry(&out, endpoint, None, || client.join_after(after)).await?;
    out.emit(&Event::Joined {
        id: client.id().as_str(),
    });
    if tty {
        out.emit(&Event::Info {
            message: "press Enter for a prompt; /help lists the commands".into(),
        });
    }

    let (line_tx, mut lines) = mpsc::channel::<Input>(64);
    if tty {
        spawn_editor(out.clone(), line_tx, client.id().to_string());
    } else {
        spawn_stdin_reader(line_tx);
    }

    let mut sends: JoinSet<()> = JoinSet::new();
    let mut lanes = Lanes::new();
    let demo = demo.map(|peer| {
        let (client, out) = (client.clone(), out.clone());
        tokio::spawn(async move { run_demo(&client, &out, &peer).await })
    });
    let mut last_to: Option<ClientId> = None;
    let mut input_open = true;
    let shutdown = crate::signal::shutdown_signal();
    tokio::pin!(shutdown);

    let mut leftover: Option<IncomingEvent> = None;
    loop {
        tokio::select! {
            event = async {
                match leftover.take() {
                    Some(ev) => Some(ev),
                    None => incoming.recv().await,
                }
            } => match event {
                Some(IncomingEvent::Message(d)) => {
                    leftover = show_batch(&out, state, &mut incoming, d, usize::MAX).1;
                }
                Some(IncomingEvent::State(s)) => {
                    let closed = matches!(s, ConnectionState::Closed { .. });
                    out.state(&s);
                    if closed {
                        break;
                    }
                }
                None => break,
            },
            input = lines.recv(), if input_open => match input {
                Some(Input::Line(line)) => {
                    if !handle_line(&client, &out, &mut sends, &mut lanes, &mut last_to, &line) {
                        break;
                    }
                }
                Some(Input::Eof) | None => input_open = false,
            },
            Some(_) = sends.join_next(), if !sends.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    if let Some(demo) = demo {
        demo.abort();
    }
    // Messages typed before leaving are still on their way: let them land.
    drop(lanes);
    while sends.join_next().await.is_some() {}
    incoming.close().await;
    Ok(())
}

/// What one input line asks for, parsed before anything is done with it.
#[derive(Debug)]
pub enum LineCommand {
    /// A blank line: nothing to do.
    Nothing,
    /// `/quit` or `/exit`.
    Quit,
    /// `/help`.
    Help,
    /// `/list`.
    List,
    /// `/history`.
    History,
    /// `/msg <id> <text>` (`to` is `Some`) or plain text for the last
    /// recipient (`to` is `None`). The text is kept as typed.
    Send { to: Option<ClientId>, text: String },
    /// `/msg` whose recipient is not a valid client ID.
    BadRecipient(ChatError),
    /// Not understood; the message says what to type instead.
    Usage(String),
}

/// Parses one input line (its trailing `\r`/`\n` ignored). Never fails:
/// what it does not understand becomes [`LineCommand::Usage`].
pub fn parse_input(line: &str) -> LineCommand {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return LineCommand::Nothing;
    }
    let Some(cmd) = line.strip_prefix('/') else {
        return LineCommand::Send {
            to: None,
            text: line.to_owned(),
        };
    };
    let (name, rest) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
    match name {
        "quit" | "exit" => LineCommand::Quit,
        "help" => LineCommand::Help,
        "list" => LineCommand::List,
        "history" => LineCommand::History,
        "msg" => {
            let rest = rest.trim_start();
            let Some((to, text)) = rest.split_once(char::is_whitespace) else {
                return LineCommand::Usage("usage: /msg <id> <text>".into());
            };
            match ClientId::parse(to) {
                Ok(to) => LineCommand::Send {
                    to: Some(to),
                    text: text.to_owned(),
                },
                Err(e) => LineCommand::BadRecipient(e),
            }
        }
        other => LineCommand::Usage(format!("unknown command /{other}; type /help")),
    }
}

/// Acts on one input line. Returns `false` on `/quit`.
fn handle_line<C: ChatClient>(
    client: &C,
    out: &Output,
    sends: &mut JoinSet<()>,
    lanes: &mut Lanes,
    last_to: &mut Option<ClientId>,
    line: &str,
) -> bool {
    let (to, text) = match parse_input(line) {
        LineCommand::Nothing => return true,
        LineCommand::Quit => return false,
        LineCommand::Help => {
            out.emit(&Event::Info {
                message: HELP.into(),
            });
            return true;
        }
        LineCommand::List => {
            let (client, out) = (client.clone(), out.clone());
            sends.spawn(async move {
                match client.list_clients().await {
                    Ok(c) => out.clients(&c),
                    Err(e) => out.error(&e),
                }
            });
            return true;
        }
        LineCommand::History => {
            let (client, out) = (client.clone(), out.clone());
            sends.spawn(async move {
                match client.history().await {
                    Ok(h) => out.history(client.id(), &h),
                    Err(e) => out.error(&e),
                }
            });
            return true;
        }
        LineCommand::BadRecipient(e) => {
            out.error(&ClientError::from(e));
            return true;
        }
        LineCommand::Usage(message) => {
            out.error_text(&message);
            return true;
        }
        LineCommand::Send { to: Some(to), text } => (to, text),
        LineCommand::Send { to: None, text } => match last_to {
            Some(to) => (to.clone(), text),
            None => {
                out.error_text("no recipient yet: start with /msg <id> <text>");
                return true;
            }
        },
    };
    *last_to = Some(to.clone());
    let lane = lanes.entry(to.clone()).or_insert_with(|| {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let (client, out) = (client.clone(), out.clone());
        sends.spawn(async move {
            while let Some(text) = rx.recv().await {
                match client.send(&to, &text).await {
                    Ok(accepted) => out.accepted(&to, &accepted),
                    Err(e) => out.error(&e),
                }
            }
        });
        tx
    });
    let _ = lane.send(text);
    true
}

/// One ordered send queue per recipient: typing never waits, different
/// recipients proceed in parallel, and one recipient gets its messages in
/// the order they were typed (two concurrent RPCs could be accepted in
/// either order).
type Lanes = std::collections::HashMap<ClientId, mpsc::UnboundedSender<String>>;

async fn run_demo<C: ChatClient>(client: &C, out: &Output, peer: &str) {
    let peer = match ClientId::parse(peer) {
        Ok(p) => p,
        Err(e) => return out.error(&ClientError::from(e)),
    };
    let give_up = Instant::now() + DEMO_PEER_WAIT;
    loop {
        match client.list_clients().await {
            Ok(list) if list.iter().any(|c| c.id == peer) => break,
            Ok(_) | Err(_) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(_) => {
                return out.error_text(&format!("demo: {peer} never registered; no demo sent"));
            }
            Err(e) => return out.error(&e),
        }
    }
    let me = client.id();
    let script = [
        format!("Hi {peer}, this is {me}. Can you read me?"),
        "This message went through the central server, which wrote it to log.txt.".to_owned(),
        "Demo over: attach to this container to keep chatting (/help).".to_owned(),
    ];
    for line in script {
        match client.send(&peer, &line).await {
            Ok(a) => out.accepted(&peer, &a),
            Err(e) => out.error(&e),
        }
        tokio::time::sleep(DEMO_PAUSE).await;
    }
}

fn spawn_stdin_reader(tx: mpsc::Sender<Input>) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(Input::Line(line)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Input::Eof).await;
    });
}

/// Reads the user's first line plainly, then runs rustyline on a thread of
/// its own, its external printer taking over the output.
fn spawn_editor(out: Output, tx: mpsc::Sender<Input>, id: String) {
    std::thread::spawn(move || {
        // The first line is read plainly (the terminal is still in cooked
        // mode); an empty one just brings up the prompt.
        let mut first = String::new();
        match std::io::stdin().read_line(&mut first) {
            Ok(0) | Err(_) => {
                let _ = tx.blocking_send(Input::Eof);
                return;
            }
            Ok(_) => {
                if tx.blocking_send(Input::Line(first)).is_err() {
                    return;
                }
            }
        }
        let mut editor = match rustyline::DefaultEditor::new() {
            Ok(e) => e,
            Err(e) => {
                out.error_text(&format!("cannot start the line editor: {e}"));
                return;
            }
        };
        if let Ok(p) = editor.create_external_printer() {
            out.set_printer(Box::new(p));
        }
        let prompt = format!("{id}> ");
        loop {
            match editor.readline(&prompt) {
                Ok(line) => {
                    let _ = editor.add_history_entry(line.as_str());
                    if tx.blocking_send(Input::Line(line)).is_err() {
                        return;
                    }
                }
                // Ctrl-C, Ctrl-D (and a terminal that went away) leave, like /quit.
                Err(_) => {
                    let _ = tx.blocking_send(Input::Line("/quit".into()));
                    return;
                }
            }
        }
    });
}

// ---- output -----------------------------------------------------------------

type Printer = Box<dyn rustyline::ExternalPrinter + Send>;

/// Where events go: stdout as text or JSON lines, or through rustyline's
/// printer once the line editor runs.
#[derive(Clone)]
struct Output {
    json: bool,
    printer: Arc<Mutex<Option<Printer>>>,
}

impl Output {
    fn new(json: bool) -> Self {
        Self {
            json,
            printer: Arc::default(),
        }
    }

    fn set_printer(&self, printer: Printer) {
        *self.printer.lock().unwrap_or_else(|e| e.into_inner()) = Some(printer);
    }

    fn emit(&self, event: &Event<'_>) {
        let line = if self.json {
            serde_json::to_string(event).unwrap_or_default()
        } else {
            event.to_text()
        };
        self.write(line, matches!(event, Event::Error { .. }) && !self.json);
    }

    fn write(&self, line: String, to_stderr: bool) {
        if let Some(p) = &mut *self.printer.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = p.print(format!("{line}\n"));
            return;
        }
        if to_stderr {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        } else {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        }
    }

    fn message(&self, m: &Message) {
        self.emit(&Event::Message(MessageView::from(m)));
    }

    fn accepted(&self, to: &ClientId, a: &crate::client::Accepted) {
        self.emit(&Event::Accepted {
            id: a.id.to_string(),
            to: to.as_str(),
            timestamp: format_timestamp(a.timestamp_ms),
        });
    }

    fn clients(&self, clients: &[ClientInfo]) {
        self.emit(&Event::Clients { clients });
    }

    fn history(&self, id: &ClientId, messages: &[Message]) {
        self.emit(&Event::History {
            id: id.as_str(),
            messages: messages.iter().map(MessageView::from).collect(),
        });
    }

    fn state(&self, s: &ConnectionState) {
        let (state, reason) = match s {
            ConnectionState::Connected => ("connected", None),
            ConnectionState::Reconnecting { reason } => ("reconnecting", Some(reason.as_str())),
            ConnectionState::Closed { reason } => ("closed", Some(reason.as_str())),
        };
        self.emit(&Event::Connection { state, reason });
    }

    fn error(&self, e: &ClientError) {
        self.emit(&Event::Error {
            message: e.to_string(),
            code: e.code().map(|c| c.as_str_name().to_owned()),
        });
    }

    fn error_text(&self, message: &str) {
        self.emit(&Event::Error {
            message: message.to_owned(),
            code: None,
        });
    }

    /// A transient diagnostic (retrying...): stderr, or a JSON event.
    fn notice(&self, message: &str) {
        if self.json {
            self.emit(&Event::Info {
                message: message.to_owned(),
            });
        } else {
            self.write(format!("* {message}"), true);
        }
    }
}

#[derive(Serialize)]
struct MessageView<'a> {
    id: String,
    from: &'a str,
    to: &'a str,
    text: &'a str,
    timestamp: String,
    seq: u64,
}

impl<'a> From<&'a Message> for MessageView<'a> {
    fn from(m: &'a Message) -> Self {
        Self {
            id: m.id.to_string(),
            from: m.from.as_str(),
            to: m.to.as_str(),
            text: &m.text,
            timestamp: m.timestamp_rfc3339(),
            seq: m.seq,
        }
    }
}

/// Everything the CLI prints; with `--json`, serialised as one object per line.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event<'a> {
    Joined {
        id: &'a str,
    },
    Message(MessageView<'a>),
    Accepted {
        id: String,
        to: &'a str,
        timestamp: String,
    },
    Clients {
        clients: &'a [ClientInfo],
    },
    History {
        id: &'a str,
        messages: Vec<MessageView<'a>>,
    },
    Connection {
        state: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    Info {
        message: String,
    },
    Error {
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
}

/// `HH:MM:SS` (UTC) out of an RFC 3339 timestamp.
fn clock(rfc3339: &str) -> &str {
    rfc3339.get(11..19).unwrap_or(rfc3339)
}

/// Continuation lines of a multi-line text are indented under the first.
fn indent(text: &str, by: usize) -> String {
    let pad = format!("\n{}", " ".repeat(by));
    text.replace('\n', &pad)
}

impl Event<'_> {
    fn to_text(&self) -> String {
        match self {
            Event::Joined { id } => format!("* connected as {id}"),
            Event::Message(m) => {
                let head = format!("[{}] {}: ", clock(&m.timestamp), m.from);
                format!("{head}{}", indent(m.text, head.chars().count()))
            }
            Event::Accepted { to, timestamp, .. } => {
                format!("* sent to {to} at {}", clock(timestamp))
            }
            Event::Clients { clients } => {
                let mut s = format!("* {} client(s):", clients.len());
                for c in clients.iter() {
                    let status = if c.online { "online" } else { "offline" };
                    s.push_str(&format!("\n  {:<32} {status}", c.id.as_str()));
                }
                s
            }
            Event::History { messages, .. } => {
                let mut s = format!("* {} message(s) sent:", messages.len());
                for m in messages {
                    let head = format!("  [{}] -> {}: ", m.timestamp, m.to);
                    s.push('\n');
                    s.push_str(&head);
                    s.push_str(&indent(m.text, head.chars().count()));
                }
                s
            }
            Event::Connection { state, reason } => match (*state, reason) {
                ("connected", _) => "* connected again".to_owned(),
                ("reconnecting", Some(r)) => format!("* connection lost ({r}); reconnecting..."),
                (_, Some(r)) => format!("* disconnected: {r}"),
                (s, None) => format!("* {s}"),
            },
            Event::Info { message } => message
                .lines()
                .map(|l| format!("* {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
            Event::Error { message, .. } => format!("error: {message}"),
        }
    }
}
