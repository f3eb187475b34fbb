//! The interactive client: incoming messages, typed lines, the demo and
//! SIGINT/SIGTERM, all in one loop. It keeps printing arrivals after input
//! ends (a pipe, a container without TTY) until `/quit`, SIGINT or SIGTERM.

use std::collections::HashMap;

use chat_core::{
    ChatClient, ClientError, ClientId, ConnectionState, ErrorCode, Incoming, IncomingEvent,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::connect::join;
use crate::input::{self, Input};
use crate::keeper::{Keeper, show_batch};
use crate::line::{HELP, LineCommand, parse_input};
use crate::output::Output;

/// One ordered send queue per recipient: typing never waits, different
/// recipients proceed in parallel, and one recipient gets its messages in
/// the order they were typed (two concurrent RPCs could be accepted in
/// either order).
type Lanes = HashMap<ClientId, mpsc::UnboundedSender<String>>;

pub(crate) async fn interactive<C: ChatClient>(
    client: C,
    out: Output,
    state: &mut Keeper,
    tty: bool,
    endpoint: &str,
    demo: Option<String>,
) -> Result<(), ClientError> {
    let mut incoming = join(&client, &out, endpoint, state).await?;
    if tty {
        out.info("press Enter for a prompt; /help lists the commands");
    }
    let mut lines = input::spawn(tty, out.clone(), client.id().to_string());
    let demo = demo.map(|peer| crate::demo::spawn(client.clone(), out.clone(), peer));
    let (unknown, mut unknown_rx) = mpsc::unbounded_channel();
    let mut repl = Repl {
        client,
        out,
        tasks: JoinSet::new(),
        lanes: Lanes::new(),
        plain_to: PlainTo::Nobody,
        unknown,
    };
    repl.run(state, &mut incoming, &mut lines, &mut unknown_rx)
        .await;
    if let Some(demo) = demo {
        demo.abort();
    }
    repl.finish().await;
    incoming.close().await;
    Ok(())
}

/// Where a plain line (no `/msg <id>`) goes.
enum PlainTo {
    /// Nowhere yet: no recipient was named.
    Nobody,
    /// The last recipient named.
    Last(ClientId),
    /// Nowhere: the server said the last recipient named is unknown (the
    /// refusal says so).
    Unknown(ClientId),
}

/// What the loop acts with besides its inputs.
struct Repl<C> {
    client: C,
    out: Output,
    /// Lanes and the answers to `/list` and `/history`, running.
    tasks: JoinSet<()>,
    lanes: Lanes,
    /// Where plain text goes.
    plain_to: PlainTo,
    /// Lanes report here a recipient the server does not know.
    unknown: mpsc::UnboundedSender<ClientId>,
}

impl<C: ChatClient> Repl<C> {
    /// Until `/quit`, the end of the connection, or a signal.
    async fn run(
        &mut self,
        state: &mut Keeper,
        incoming: &mut Incoming,
        lines: &mut mpsc::Receiver<Input>,
        unknown: &mut mpsc::UnboundedReceiver<ClientId>,
    ) {
        let mut input_open = true;
        let mut leftover: Option<IncomingEvent> = None;
        let shutdown = crate::signal::shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                event = next_event(incoming, &mut leftover) => {
                    match self.show(state, incoming, event) {
                        Ok(after) => leftover = after,
                        Err(()) => break,
                    }
                }
                input = lines.recv(), if input_open => match input {
                    Some(Input::Line(line)) => {
                        if !self.handle_line(&line) {
                            break;
                        }
                    }
                    Some(Input::Eof) | None => input_open = false,
                },
                Some(to) = unknown.recv() => self.forget(&to),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
    }

    /// Shows an incoming event. Returns an event read past a batch of
    /// messages, or `Err` once the connection has ended for good.
    fn show(
        &self,
        state: &mut Keeper,
        incoming: &mut Incoming,
        event: Option<IncomingEvent>,
    ) -> Result<Option<IncomingEvent>, ()> {
        match event {
            Some(IncomingEvent::Message(d)) => {
                Ok(show_batch(&self.out, state, incoming, d, usize::MAX).1)
            }
            Some(IncomingEvent::State(s)) => {
                self.out.state(&s);
                match s {
                    ConnectionState::Closed { .. } => Err(()),
                    _ => Ok(None),
                }
            }
            None => Err(()),
        }
    }

    /// Acts on one input line. Returns `false` on `/quit`.
    fn handle_line(&mut self, line: &str) -> bool {
        match parse_input(line) {
            LineCommand::Nothing => {}
            LineCommand::Quit => return false,
            LineCommand::Help => self.out.info(HELP),
            LineCommand::List => self.list(),
            LineCommand::History => self.history(),
            LineCommand::BadRecipient(e) => self.out.error(&ClientError::from(e)),
            LineCommand::Usage(message) => self.out.error_text(&message),
            LineCommand::Send { to, text } => self.send(to, text),
        }
        true
    }

    fn list(&mut self) {
        let (client, out) = (self.client.clone(), self.out.clone());
        self.tasks.spawn(async move {
            match client.list_clients().await {
                Ok(c) => out.clients(&c),
                Err(e) => out.error(&e),
            }
        });
    }

    fn history(&mut self) {
        let (client, out) = (self.client.clone(), self.out.clone());
        self.tasks.spawn(async move {
            match client.history().await {
                Ok(h) => out.history(client.id(), &h),
                Err(e) => out.error(&e),
            }
        });
    }

    /// Queues `text` on the lane of `to` (or of the last recipient).
    fn send(&mut self, to: Option<ClientId>, text: String) {
        let to = match (to, &self.plain_to) {
            (Some(to), _) => to,
            (None, PlainTo::Last(to)) => to.clone(),
            (None, PlainTo::Unknown(gone)) => {
                let refusal =
                    format!("no recipient ({gone} is not registered): use /msg <id> <text>");
                return self.out.error_text(&refusal);
            }
            (None, PlainTo::Nobody) => {
                return self
                    .out
                    .error_text("no recipient yet: start with /msg <id> <text>");
            }
        };
        self.plain_to = PlainTo::Last(to.clone());
        let lane = self.lanes.entry(to.clone()).or_insert_with(|| {
            let (client, out, unknown) =
                (self.client.clone(), self.out.clone(), self.unknown.clone());
            spawn_lane(&mut self.tasks, client, out, unknown, to)
        });
        let _ = lane.send(text);
    }

    /// The server does not know `to`: plain text no longer goes there
    /// (each line would fail the same way).
    fn forget(&mut self, to: &ClientId) {
        if matches!(&self.plain_to, PlainTo::Last(last) if last == to) {
            self.plain_to = PlainTo::Unknown(to.clone());
            self.out.info(format!(
                "plain text has no recipient now ({to} is not registered): use /msg <id> <text>"
            ));
        }
    }

    /// Lets the messages typed before leaving land.
    async fn finish(self) {
        let Repl {
            lanes, mut tasks, ..
        } = self;
        drop(lanes);
        while tasks.join_next().await.is_some() {}
    }
}

/// The event left over from the last batch, or the next one to arrive.
async fn next_event(
    incoming: &mut Incoming,
    leftover: &mut Option<IncomingEvent>,
) -> Option<IncomingEvent> {
    match leftover.take() {
        Some(ev) => Some(ev),
        None => incoming.recv().await,
    }
}

/// A task that sends what is queued for `to`, in order, until the queue
/// is dropped. Reports on `unknown` when the server does not know `to`.
fn spawn_lane<C: ChatClient>(
    tasks: &mut JoinSet<()>,
    client: C,
    out: Output,
    unknown: mpsc::UnboundedSender<ClientId>,
    to: ClientId,
) -> mpsc::UnboundedSender<String> {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tasks.spawn(async move {
        while let Some(text) = rx.recv().await {
            match client.send(&to, &text).await {
                Ok(accepted) => out.accepted(&to, &accepted),
                Err(e) => {
                    out.error(&e);
                    if e.code() == Some(ErrorCode::NotFound) {
                        let _ = unknown.send(to.clone());
                    }
                }
            }
        }
    });
    tx
}
