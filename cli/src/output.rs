//! Everything the client shows: events as text lines or, with `--json`,
//! one JSON object per line. This is the only place in the libraries that
//! writes to stdout; errors and diagnostics go to stderr as text.

use std::io::Write;
use std::sync::{Arc, Mutex};

use chat_core::message::format_timestamp;
use chat_core::{Accepted, ClientError, ClientId, ClientInfo, ConnectionState, Message};
use serde::Serialize;

type Printer = Box<dyn rustyline::ExternalPrinter + Send>;

/// Where events go: stdout as text or JSON lines, or through rustyline's
/// printer once the line editor runs.
#[derive(Clone)]
pub(crate) struct Output {
    json: bool,
    printer: Arc<Mutex<Option<Printer>>>,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Self {
            json,
            printer: Arc::default(),
        }
    }

    pub(crate) fn set_printer(&self, printer: Printer) {
        *self.printer.lock().unwrap_or_else(|e| e.into_inner()) = Some(printer);
    }

    pub(crate) fn emit(&self, event: &Event<'_>) {
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

    pub(crate) fn info(&self, message: impl Into<String>) {
        self.emit(&Event::Info {
            message: message.into(),
        });
    }

    pub(crate) fn joined(&self, id: &ClientId) {
        self.emit(&Event::Joined { id: id.as_str() });
    }

    pub(crate) fn message(&self, m: &Message) {
        self.emit(&Event::Message(MessageView::from(m)));
    }

    pub(crate) fn accepted(&self, to: &ClientId, a: &Accepted) {
        self.emit(&Event::Accepted {
            id: a.id.to_string(),
            to: to.as_str(),
            timestamp: format_timestamp(a.timestamp_ms),
        });
    }

    pub(crate) fn clients(&self, clients: &[ClientInfo]) {
        self.emit(&Event::Clients { clients });
    }

    pub(crate) fn history(&self, id: &ClientId, messages: &[Message]) {
        self.emit(&Event::History {
            id: id.as_str(),
            messages: messages.iter().map(MessageView::from).collect(),
        });
    }

    pub(crate) fn state(&self, s: &ConnectionState) {
        let (state, reason) = match s {
            ConnectionState::Connected => ("connected", None),
            ConnectionState::Reconnecting { reason } => ("reconnecting", Some(reason.as_str())),
            ConnectionState::Closed { reason } => ("closed", Some(reason.as_str())),
        };
        self.emit(&Event::Connection { state, reason });
    }

    pub(crate) fn error(&self, e: &ClientError) {
        self.emit(&Event::Error {
            message: e.to_string(),
            code: e.code().map(|c| c.as_str_name().to_owned()),
        });
    }

    pub(crate) fn error_text(&self, message: &str) {
        self.emit(&Event::Error {
            message: message.to_owned(),
            code: None,
        });
    }

    /// A transient diagnostic (retrying...): stderr, or a JSON event.
    pub(crate) fn notice(&self, message: &str) {
        if self.json {
            self.info(message);
        } else {
            self.write(format!("* {message}"), true);
        }
    }
}

#[derive(Serialize)]
pub(crate) struct MessageView<'a> {
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
pub(crate) enum Event<'a> {
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
            Event::Clients { clients } => clients_text(clients),
            Event::History { messages, .. } => history_text(messages),
            Event::Connection { state, reason } => connection_text(state, *reason),
            Event::Info { message } => message
                .lines()
                .map(|l| format!("* {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
            Event::Error { message, .. } => format!("error: {message}"),
        }
    }
}

fn clients_text(clients: &[ClientInfo]) -> String {
    let mut s = format!("* {} client(s):", clients.len());
    for c in clients {
        let status = if c.online { "online" } else { "offline" };
        s.push_str(&format!("\n  {:<32} {status}", c.id.as_str()));
    }
    s
}

fn history_text(messages: &[MessageView<'_>]) -> String {
    let mut s = format!("* {} message(s) sent:", messages.len());
    for m in messages {
        let head = format!("  [{}] -> {}: ", m.timestamp, m.to);
        s.push('\n');
        s.push_str(&head);
        s.push_str(&indent(m.text, head.chars().count()));
    }
    s
}

fn connection_text(state: &str, reason: Option<&str>) -> String {
    match (state, reason) {
        ("connected", _) => "* connected again".to_owned(),
        ("reconnecting", Some(r)) => format!("* connection lost ({r}); reconnecting..."),
        (_, Some(r)) => format!("* disconnected: {r}"),
        (s, None) => format!("* {s}"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_line_message_is_indented_under_its_head() {
        let view = MessageView {
            id: "x".into(),
            from: "alice",
            to: "bob",
            text: "one\ntwo",
            timestamp: "2026-11-27T09:36:39.123Z".into(),
            seq: 1,
        };
        assert_eq!(
            Event::Message(view).to_text(),
            "[09:36:39] alice: one\n                  two"
        );
    }

    #[test]
    fn connection_changes_read_as_sentences() {
        assert_eq!(connection_text("connected", None), "* connected again");
        assert_eq!(
            connection_text("reconnecting", Some("broker gone")),
            "* connection lost (broker gone); reconnecting..."
        );
        assert_eq!(
            connection_text("closed", Some("bye")),
            "* disconnected: bye"
        );
    }

    #[test]
    fn json_events_are_tagged_by_kind() {
        let event = Event::Error {
            message: "no".into(),
            code: None,
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"event":"error","message":"no"}"#
        );
    }
}
