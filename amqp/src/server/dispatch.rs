//! Request dispatch: decode a request from `<ns>.server`, run it on
//! chat-core and answer it.

use std::sync::Arc;

use chat_core::{BatchOutcome, ChatError, ClientInfo, Credentials, ErrorCode, SendCommand};
use chat_proto::v1 as pb;
use lapin::message::Delivery;
use tokio::task::JoinSet;

use super::generation::{Generation, Request};
use super::presence;
use crate::error::{AmqpError, error_reply, error_reply_with};
use crate::{request, topology};

/// Decodes a request from `<ns>.server` and starts its handling in `tasks`;
/// sends are accepted before this returns (see [`accept_send`]).
pub(super) fn dispatch(generation: &Arc<Generation>, delivery: Delivery, tasks: &mut JoinSet<()>) {
    let kind = delivery.properties.kind().as_ref().map(|k| k.as_str());
    let body = request::decode(kind, &delivery.data);
    let request = Request {
        reply_to: delivery.properties.reply_to().clone(),
        correlation_id: delivery.properties.correlation_id().clone(),
        delivery,
    };
    let g = generation.clone();
    if let Some(reply_to) = &request.reply_to
        && !topology::is_reply_queue(reply_to.as_str())
    {
        // Answering would publish into that queue through the default
        // exchange: into someone's inbox, say. Not carried out either (its
        // sender could not learn the outcome); dead-lettered for inspection.
        tracing::warn!(
            reply_to = reply_to.as_str(),
            "rejecting a request whose reply_to is not a server-named reply queue (amq.gen-*, amq.rabbitmq.reply-to)"
        );
        tasks.spawn(async move { request.dead_letter(&g).await });
        return;
    }
    match body {
        Err(why) => refuse_malformed(g, request, why, tasks),
        Ok((pb::request::Body::Send(send), creds)) => accept_send(g, request, send, &creds, tasks),
        Ok((pb::request::Body::SendBatch(batch), creds)) => {
            accept_batch(g, request, batch, &creds, tasks);
        }
        Ok((other, creds)) => {
            tasks.spawn(async move {
                let result = handle(&g, &creds, other).await;
                finish(&g, request, result).await;
            });
        }
    }
}

/// A request that does not decode: refused with an error reply and
/// dead-lettered.
fn refuse_malformed(g: Arc<Generation>, request: Request, why: ChatError, tasks: &mut JoinSet<()>) {
    tracing::warn!(
        bytes = request.delivery.data.len(),
        reply_to = ?request.reply_to,
        "rejecting a request: {why}"
    );
    tasks.spawn(async move {
        g.server.metrics().refused(why.code());
        let reply = error_reply(&why);
        g.reply(&request, reply).await;
        request.dead_letter(&g).await;
    });
}

/// A `Send`: accepted here, in delivery order (the recipient's seq is
/// assigned before this returns, so messages from one sender keep the
/// order in which they were queued); answered in `tasks`.
fn accept_send(
    g: Arc<Generation>,
    request: Request,
    send: pb::SendRequest,
    creds: &Credentials,
    tasks: &mut JoinSet<()>,
) {
    g.server.metrics().send_batch(1);
    let admitted = g.server.authenticate(creds).and_then(|principal| {
        let cmd = SendCommand::parse(send, &g.server.limits())?;
        g.server.accept(&principal, cmd)
    });
    tasks.spawn(async move {
        let result = match admitted {
            Ok(admitted) => admitted.durable().await,
            Err(e) => Err(e),
        };
        finish_send(&g, request, result).await;
    });
}

/// A `SendBatch`: accepted here too, in delivery order, each send in turn;
/// answered in `tasks`.
fn accept_batch(
    g: Arc<Generation>,
    request: Request,
    batch: pb::SendBatchRequest,
    creds: &Credentials,
    tasks: &mut JoinSet<()>,
) {
    let admitted = g
        .server
        .authenticate(creds)
        .and_then(|principal| g.server.accept_batch(&principal, batch.sends));
    tasks.spawn(async move {
        match admitted {
            Ok(admitted) => finish_batch(&g, request, admitted.durable().await).await,
            Err(e) => finish_send(&g, request, Err(e)).await,
        }
    });
}

/// Runs a request other than a send on chat-core.
async fn handle(
    g: &Generation,
    creds: &Credentials,
    body: pb::request::Body,
) -> Result<pb::reply::Body, AmqpError> {
    match body {
        pb::request::Body::Register(r) => register(g, creds, &r.client_id).await,
        pb::request::Body::ListClients(_) => Ok(list(g)),
        pb::request::Body::Join(j) => presence::join(g, creds, &j.client_id).await,
        pb::request::Body::History(h) => history(g, creds, h).await,
        // `dispatch` hands sends to `accept_send` and `accept_batch`.
        pb::request::Body::Send(_) | pb::request::Body::SendBatch(_) => {
            unreachable!("handled above")
        }
    }
}

/// Answers and acknowledges a request other than a send ([`handle`]'s
/// `result`); a broker failure ends the generation instead.
async fn finish(g: &Generation, request: Request, result: Result<pb::reply::Body, AmqpError>) {
    match result {
        Ok(body) => {
            g.reply(&request, pb::Reply { body: Some(body) }).await;
            request.ack(g).await;
        }
        Err(AmqpError::Chat(ChatError::ShuttingDown)) => {}
        Err(AmqpError::Chat(e)) => {
            g.server.metrics().refused(e.code());
            g.reply(&request, error_reply(&e)).await;
            request.ack(g).await;
        }
        Err(e @ (AmqpError::Management(_) | AmqpError::ManagementUnreachable(_))) => {
            // The ID is registered; its broker user is not (yet).
            // The client may register again (idempotent).
            tracing::error!("{e}");
            // The details (the management URL) stay in the log.
            let why = "the server cannot create this client's broker user right now (its log says why); register again later".to_owned();
            g.server.metrics().refused(ErrorCode::Unavailable);
            g.reply(&request, error_reply_with(ErrorCode::Unavailable, why))
                .await;
            request.ack(g).await;
        }
        Err(e) => g.broken.trigger(e),
    }
}

async fn finish_send(
    g: &Generation,
    request: Request,
    result: Result<chat_core::Receipt, ChatError>,
) {
    match result {
        Ok(message) => {
            let forwarded = g.server.wait_forwarded(&message.to, message.seq);
            let reply = pb::reply::Body::Send(message.to_reply());
            g.reply(&request, pb::Reply { body: Some(reply) }).await;
            // The request stays unacknowledged until the recipient's queue
            // has the message; if this generation ends first, the broker
            // redelivers the request and the dedupe by ID takes over.
            if forwarded.await.is_ok() {
                request.ack(g).await;
            }
        }
        // Left unacknowledged: handled again after the restart.
        Err(ChatError::ShuttingDown) => {}
        Err(e) => {
            tracing::info!(error = %e, "send refused");
            g.server.metrics().refused(e.code());
            g.reply(&request, error_reply(&e)).await;
            request.ack(g).await;
        }
    }
}

/// Answers a `SendBatch` once its sends are durable, and acknowledges it
/// once every accepted message is in its recipient's queue (as
/// [`finish_send`] does for one).
async fn finish_batch(g: &Generation, request: Request, outcome: BatchOutcome) {
    if outcome.shutting_down() {
        // Left unacknowledged: handled again after the restart, where the
        // sends accepted already are recognised by their IDs.
        return;
    }
    let forwarded = outcome.forwarded();
    let reply = pb::reply::Body::SendBatch(outcome.reply());
    g.reply(&request, pb::Reply { body: Some(reply) }).await;
    if forwarded.await.is_ok() {
        request.ack(g).await;
    }
}

/// Registers (claims) or resumes an ID. The secret is checked first, so
/// that nobody else learns anything about the ID or touches its queue.
///
/// An ID that chat-core has online is refused, unless the broker says its
/// consumer is gone already: the event saying so may still be on its way
/// (a client killed and restarted at once), and the broker's lock decides.
async fn register(
    g: &Generation,
    creds: &Credentials,
    raw_id: &str,
) -> Result<pb::reply::Body, AmqpError> {
    let (principal, created) = match g.server.register(creds, raw_id).await {
        Err(ChatError::AlreadyOnline(id)) if presence::gone(g, &id).await? => {
            g.server.register(creds, raw_id).await?
        }
        registered => registered?,
    };
    let id = principal.id().clone();
    g.declare_client_queue(&id).await?;
    if let Some(users) = &g.users {
        // The secret was verified above: it becomes the broker password.
        users.grant(&id, &creds.secret).await?;
    }
    tracing::info!(client = %id, created, "client registered");
    Ok(pb::reply::Body::Register(pb::RegisterReply {
        client_id: id.to_string(),
        created,
    }))
}

/// Registered clients, with presence as chat-core has it (see `presence`).
fn list(g: &Generation) -> pb::reply::Body {
    pb::reply::Body::ListClients(pb::ListClientsReply {
        clients: g.server.list().iter().map(ClientInfo::to_proto).collect(),
    })
}

/// One page of the asker's history (see `HistoryRequest` in chat.proto).
async fn history(
    g: &Generation,
    creds: &Credentials,
    req: pb::HistoryRequest,
) -> Result<pb::reply::Body, AmqpError> {
    let principal = g.server.authenticate(creds)?;
    let page = g
        .server
        .history_page(&principal, &req.client_id, req.after, req.limit)
        .await?;
    Ok(pb::reply::Body::History(page))
}
