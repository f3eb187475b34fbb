//! A TCP proxy inside loadgen, in front of a server or broker: clients
//! connect through it, so the `cut-connections` fault can break every
//! client connection at once (and refuse new ones for a while) without
//! touching the server, as a network failure would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    /// Bumped by every cut; connection tasks end when it changes.
    cuts: watch::Sender<u64>,
    refuse_until: Arc<Mutex<Option<Instant>>>,
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
        let refuse_until: Arc<Mutex<Option<Instant>>> = Arc::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            cuts.clone(),
            refuse_until.clone(),
        ));
        Ok(Self {
            addr,
            cuts,
            refuse_until,
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
        self.cuts.send_modify(|c| *c += 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: String,
    cuts: watch::Sender<u64>,
    refuse_until: Arc<Mutex<Option<Instant>>>,
) {
    while let Ok((client, _)) = listener.accept().await {
        let refusing = refuse_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| Instant::now() < t);
        if refusing {
            drop(client);
            continue;
        }
        let mut cut = cuts.subscribe();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let mut client = client;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cut.changed() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn forwards_then_cuts_then_refuses_for_a_while() {
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
}
