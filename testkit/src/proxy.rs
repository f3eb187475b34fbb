//! A TCP proxy in front of a server or broker: clients connect through it,
//! so a test (or loadgen's `cut-connections` fault) can break every client
//! connection at once (and refuse new ones for a while) without touching
//! the server, as a network failure would, and a test (or loadgen's
//! `freeze-clients` fault) can stop every client connection dead without
//! closing it, as a SIGSTOPped client process looks to its server: the
//! socket stays open, nothing is read or written, and the kernel buffers
//! fill until the peer's flow control stops it.
//!
//! Shared by loadgen and the end-to-end scenarios (the liveness scenario
//! freezes a client this way), so there is one proxy, not one per user.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    /// Bumped by every cut; connection tasks end when it changes.
    cuts: watch::Sender<u64>,
    /// True while the connections are frozen; the pumps wait on it.
    frozen: watch::Sender<bool>,
    /// New connections are turned away until then ([`Proxy::cut`]).
    refuse_until: Arc<Mutex<Option<Instant>>>,
    /// New connections are turned away while set ([`Proxy::refuse`]).
    refusing: Arc<AtomicBool>,
    accept: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cuts.send_modify(|c| *c += 1);
    }
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cuts, _) = watch::channel(0u64);
        let (frozen, _) = watch::channel(false);
        let refuse_until: Arc<Mutex<Option<Instant>>> = Arc::default();
        let refusing: Arc<AtomicBool> = Arc::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            cuts.clone(),
            frozen.clone(),
            Refusal {
                until: refuse_until.clone(),
                on: refusing.clone(),
            },
        ));
        Ok(Self {
            addr,
            cuts,
            frozen,
            refuse_until,
            refusing,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection through the proxy and refuses new ones for
    /// `refuse_for`.
    pub fn cut(&self, refuse_for: Duration) {
        *self.refuse_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + refuse_for);
        self.cut_all();
    }

    /// Closes every connection through the proxy now, as a network failure
    /// or a broker restart would; new ones are served unless refused.
    pub fn cut_all(&self) {
        self.cuts.send_modify(|c| *c += 1);
    }

    /// Turns every new connection away (accepted and closed at once, as by
    /// a server or broker that is down) from `refuse(true)` until
    /// `refuse(false)`. Open connections are not touched.
    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    /// Stops every byte in both directions on every connection (open and
    /// new) for `duration`, then lets them flow again. Nothing is closed.
    pub async fn freeze(&self, duration: Duration) {
        self.set_frozen(true);
        tokio::time::sleep(duration).await;
        self.set_frozen(false);
    }

    /// Holds (`true`) or releases (`false`) every byte in both directions
    /// on every connection, open and new, until told otherwise. Nothing is
    /// closed: the peers see a connection that has gone silent.
    pub fn set_frozen(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

/// When the proxy turns new connections away.
struct Refusal {
    until: Arc<Mutex<Option<Instant>>>,
    on: Arc<AtomicBool>,
}

impl Refusal {
    fn now(&self) -> bool {
        self.on.load(Ordering::SeqCst)
            || self
                .until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| Instant::now() < t)
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: String,
    cuts: watch::Sender<u64>,
    frozen: watch::Sender<bool>,
    refusal: Refusal,
) {
    while let Ok((client, _)) = listener.accept().await {
        if refusal.now() {
            drop(client);
            continue;
        }
        let mut cut = cuts.subscribe();
        let (up_frozen, down_frozen) = (frozen.subscribe(), frozen.subscribe());
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_r, client_w) = client.into_split();
            let (server_r, server_w) = server.into_split();
            tokio::select! {
                _ = pump(client_r, server_w, up_frozen) => {}
                _ = pump(server_r, client_w, down_frozen) => {}
                _ = cut.changed() => {}
            }
        });
    }
}

/// Copies `from` to `to` until either side ends, holding still (neither
/// reading nor writing) while `frozen` is true.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP echo server on 127.0.0.1:0; returns its address.
    async fn echo_server() -> String {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        upstream
    }

    #[tokio::test]
    async fn forwards_then_cuts_then_refuses_for_a_while() {
        let upstream = echo_server().await;
        let proxy = Proxy::start(upstream).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        proxy.cut(Duration::from_millis(300));
        let n = c.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "the cut closes the connection");
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            refused.read(&mut buf).await.unwrap_or(0),
            0,
            "refused while down"
        );

        tokio::time::sleep(Duration::from_millis(350)).await;
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        again.write_all(b"pong").await.unwrap();
        again.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn refusing_turns_new_connections_away_until_told_otherwise() {
        let upstream = echo_server().await;
        let proxy = Proxy::start(upstream).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 4];
        open.write_all(b"open").await.unwrap();
        open.read_exact(&mut buf).await.unwrap();

        proxy.refuse(true);
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(refused.read(&mut buf).await.unwrap_or(0), 0, "refused");
        open.write_all(b"kept").await.unwrap();
        open.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"kept", "an open connection is not touched");

        proxy.cut_all();
        assert_eq!(open.read(&mut buf).await.unwrap_or(0), 0, "cut");
        proxy.refuse(false);
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        again.write_all(b"back").await.unwrap();
        again.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"back");
    }

    #[tokio::test]
    async fn a_freeze_holds_bytes_without_closing_then_lets_them_through() {
        let upstream = echo_server().await;
        let proxy = Arc::new(Proxy::start(upstream).await.unwrap());
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 4];
        c.write_all(b"warm").await.unwrap();
        c.read_exact(&mut buf).await.unwrap();

        let freezer = tokio::spawn({
            let proxy = proxy.clone();
            async move { proxy.freeze(Duration::from_secs(2)).await }
        });
        tokio::task::yield_now().await;
        c.write_all(b"held").await.unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await;
        assert!(early.is_err(), "nothing comes back while frozen");
        freezer.await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(
            &buf, b"held",
            "the held bytes arrive after the freeze, in order"
        );
    }
}
