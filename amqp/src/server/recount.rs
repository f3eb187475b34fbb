//! What the client queues hold, read back from the broker: their depth
//! (what waits unread, for `--max-pending`) and, once per connection, their
//! consumers (who is online, for `presence`).

use std::sync::Arc;
use std::time::Duration;

use chat_core::ClientId;
use futures::{StreamExt, TryStreamExt};

use super::generation::Generation;
use super::{LIST_CONCURRENCY, presence};
use crate::error::AmqpError;

/// How often the depth of the queues of recipients near `--max-pending` is
/// read back, so that a send refused because a recipient had not read is
/// accepted again about this long after it did.
const RECOUNT_EVERY: Duration = Duration::from_secs(1);

/// Keeps chat-core's count of what waits unread in the client queues
/// (`ChatServer::set_queued_downstream`) close to the truth for the
/// recipients where it decides anything. Runs for one generation.
pub(super) async fn recount(g: Arc<Generation>) {
    if let Err(e) = recount_loop(&g).await {
        g.broken.trigger(e);
    }
}

/// The start of a generation: after a (re)start, or events missed while
/// disconnected, the server knows nothing of what waits in the client
/// queues or of who consumes them. Reads every client's queue once and
/// hands both to chat-core. Runs before the generation serves requests or
/// broker events, so that nothing else changes presence meanwhile.
pub(super) async fn survey(g: &Generation) -> Result<(), AmqpError> {
    futures::stream::iter(g.server.downstream_marks())
        .map(|(id, mark)| async move {
            let q = g.declare_client_queue(&id).await?;
            g.server
                .set_queued_downstream(&id, mark, q.message_count() as usize);
            presence::follow(g, &id, q.consumer_count() > 0);
            Ok::<_, AmqpError>(())
        })
        .buffer_unordered(LIST_CONCURRENCY)
        .try_collect::<()>()
        .await
}

/// After [`survey`]: only the recipients near the limit are recounted.
async fn recount_loop(g: &Generation) -> Result<(), AmqpError> {
    let mut every = tokio::time::interval(RECOUNT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let candidates = g.server.downstream_recount_candidates();
        if !candidates.is_empty() {
            recount_queues(g, candidates).await?;
        }
    }
}

/// Reads the depth of each client's queue (declaring it, which is
/// idempotent and answers with its ready messages) and hands it to
/// chat-core with the cursor read before asking. Deliveries a connected
/// client holds unacknowledged (at most its prefetch) are not in that count.
async fn recount_queues(g: &Generation, marks: Vec<(ClientId, u64)>) -> Result<(), AmqpError> {
    futures::stream::iter(marks)
        .map(|(id, mark)| async move {
            let q = g.declare_client_queue(&id).await?;
            g.server
                .set_queued_downstream(&id, mark, q.message_count() as usize);
            Ok::<_, AmqpError>(())
        })
        .buffer_unordered(LIST_CONCURRENCY)
        .try_collect::<()>()
        .await
}
