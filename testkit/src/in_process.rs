//! A chat server running inside the test's own process, for tests that
//! must look at the server's state (what it holds for whom) while real
//! clients talk to it over the real transport.

use std::future::Future;
use std::pin::Pin;

use chat_core::{ChatServer, ServerConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::PATIENCE;

/// What a transport's `run` receives to know when to stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A [`ChatServer`] over a temporary data directory, served by a transport
/// task. [`InProcess::stop`] stops it and checks it ended cleanly; dropping
/// it aborts the task.
pub struct InProcess<E> {
    /// The chat state the transport serves.
    pub chat: ChatServer,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E: std::fmt::Debug + Send + 'static> InProcess<E> {
    /// Opens a server that keeps at most `max_pending` messages per
    /// recipient, and spawns `serve(chat, shutdown)` (a transport's `run`).
    pub fn start<Fut>(max_pending: usize, serve: impl FnOnce(ChatServer, Shutdown) -> Fut) -> Self
    where
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = ServerConfig::new(dir.path());
        config.limits.max_pending = max_pending;
        let chat = ChatServer::open(config).expect("server opens");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            chat.clone(),
            Box::pin(async {
                let _ = stopped.await;
            }),
        ));
        Self {
            chat,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Messages the server holds for `id` that have not reached their next
    /// hop yet.
    pub fn held_for(&self, id: &str) -> usize {
        self.chat
            .undelivered()
            .iter()
            .filter(|m| m.to.as_str() == id)
            .count()
    }

    /// Stops the server; it must end cleanly (it did not crash).
    pub async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        let task = self.task.take().expect("running");
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("server stops")
            .expect("server task did not panic")
            .expect("server ended without error");
    }
}

impl<E> Drop for InProcess<E> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
