//! The one-shot commands that need more than one call (`send`, `listen`);
//! `list` and `history` are a single call each, made by the run loop.

use std::time::Duration;

use chat_core::{ChatClient, ClientError, ClientId, ErrorCode, Incoming, IncomingEvent};
use tokio::time::Instant;

use crate::connect::join;
use crate::keeper::{Keeper, show_batch};
use crate::output::Output;

pub(crate) async fn send<C: ChatClient>(
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

/// Goes online and shows messages until `count` were shown, `timeout`
/// passed or the connection ended; too few by then is an error.
pub(crate) async fn listen<C: ChatClient>(
    client: &C,
    out: &Output,
    endpoint: &str,
    state: &mut Keeper,
    count: Option<usize>,
    timeout: Option<Duration>,
) -> Result<(), ClientError> {
    let mut incoming = join(client, out, endpoint, state).await?;
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut seen = 0usize;
    let mut leftover = None;
    while count.is_none_or(|c| seen < c) {
        let next = match leftover.take() {
            Some(ev) => Some(ev),
            None => match recv_until(&mut incoming, deadline).await {
                Some(ev) => ev,
                None => break,
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

/// The next event (`Some(None)` once the stream ended), or `None` once
/// `deadline` has passed.
async fn recv_until(
    incoming: &mut Incoming,
    deadline: Option<Instant>,
) -> Option<Option<IncomingEvent>> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, incoming.recv()).await.ok(),
        None => Some(incoming.recv().await),
    }
}
