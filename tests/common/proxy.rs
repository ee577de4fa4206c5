//! A TCP proxy for the fault harness: it stands between clients and a server
//! (Vigil and Redis) and can pass traffic, hold it (stop forwarding while every
//! socket stays open, as a stalled link does) or drop it (close every
//! connection at once, as a broken link or a restarted load balancer does).
//! There is no packet filter to use on these machines, so links are broken here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Hold,
}

/// A proxy on `127.0.0.1:port` to `upstream`, running until dropped.
pub struct Proxy {
    pub port: u16,
    /// The mode, and the generation: a connection opened in an older
    /// generation than the current one is closed.
    state: watch::Sender<(Mode, u64)>,
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (state, _) = watch::channel((Mode::Pass, 0u64));
        let connections = Arc::new(AtomicU64::new(0));
        let task = {
            let state = state.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        // The server is down: the client sees its connection refused.
                        continue;
                    };
                    connections.fetch_add(1, Ordering::Relaxed);
                    let generation = state.borrow().1;
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, state.subscribe(), generation));
                    tokio::spawn(pump(sr, cw, state.subscribe(), generation));
                }
            })
        };
        Proxy { port, state, connections, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops forwarding; every socket stays open.
    pub fn hold(&self) {
        self.state.send_modify(|s| s.0 = Mode::Hold);
    }

    /// Forwards again what was held.
    pub fn pass(&self) {
        self.state.send_modify(|s| s.0 = Mode::Pass);
    }

    /// Closes every open connection; new ones pass.
    pub fn drop_connections(&self) {
        self.state.send_modify(|s| *s = (Mode::Pass, s.1 + 1));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.drop_connections();
    }
}

/// Copies `from` to `to` while the mode is `Pass`, waiting while it is
/// `Hold`; returns (closing both halves) at end of stream, on an error, or
/// when the generation moves past `generation`.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<(Mode, u64)>,
    generation: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        loop {
            let (mode, g) = *state.borrow_and_update();
            if g != generation {
                return;
            }
            if mode == Mode::Pass {
                break;
            }
            if state.changed().await.is_err() {
                return;
            }
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Reading is cancellation safe: a change of mode is looked at first.
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
