//! The recount task: what waits unread in the client queues, for
//! `--max-pending`.

use std::sync::Arc;
use std::time::Duration;

use chat_core::ClientId;
use futures::{StreamExt, TryStreamExt};

use super::LIST_CONCURRENCY;
use super::generation::Generation;
use crate::error::AmqpError;
use crate::topology;

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

async fn recount_loop(g: &Generation) -> Result<(), AmqpError> {
    // After a (re)start the server knows nothing of what waits downstream.
    recount_queues(g, g.server.downstream_marks()).await?;
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
            let q = topology::declare_client_queue(&g.admin, &g.names, &id).await?;
            g.declared().insert(id.clone());
            g.server
                .set_queued_downstream(&id, mark, q.message_count() as usize);
            Ok::<_, AmqpError>(())
        })
        .buffer_unordered(LIST_CONCURRENCY)
        .try_collect::<()>()
        .await
}
