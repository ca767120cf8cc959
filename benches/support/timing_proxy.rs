//! A TCP proxy in front of a seller that times every HTTP request it forwards: from the
//! request's first byte to the response's last, as the buyer's side of the wire sees them.
//! A benchmark subtracts those intervals from a call's latency to get what the buyer itself
//! spent, without the noise of comparing two different requests (a seller's settle time
//! varies by tens of milliseconds from one request to the next).
//!
//! Requests are told apart per connection: a client chunk after response bytes starts the
//! next request (HTTP/1.1 keep-alive, one request in flight per connection, as reqwest, Node's
//! fetch and tollgate send them).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every request forwarded so far: (first request byte, last response byte seen).
#[derive(Default)]
pub struct Intervals(Mutex<Vec<(Instant, Instant)>>);

impl Intervals {
    /// The durations (ms) of the requests that started in `[from, to]`, in order.
    pub fn between(&self, from: Instant, to: Instant) -> Vec<f64> {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter(|(start, _)| *start >= from && *start <= to)
            .map(|(start, end)| end.duration_since(*start).as_secs_f64() * 1e3)
            .collect()
    }

    fn open(&self, at: Instant) -> usize {
        let mut all = self.0.lock().unwrap();
        all.push((at, at));
        all.len() - 1
    }

    fn answered(&self, index: usize, at: Instant) {
        self.0.lock().unwrap()[index].1 = at;
    }
}

/// Listens on 127.0.0.1 and forwards every connection to `seller`. Returns the proxy's
/// address and the intervals it records; it runs until the runtime stops.
pub async fn start(seller: SocketAddr) -> (SocketAddr, Arc<Intervals>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let intervals = Arc::new(Intervals::default());
    let recorded = intervals.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(seller).await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            tokio::spawn(forward(client, server, recorded.clone()));
        }
    });
    (addr, intervals)
}

/// The request being timed on one connection, and whether its response has begun.
struct Current {
    index: Option<usize>,
    responding: bool,
}

async fn forward(client: TcpStream, server: TcpStream, intervals: Arc<Intervals>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let current = Arc::new(Mutex::new(Current {
        index: None,
        responding: false,
    }));
    let (up_current, up_intervals) = (current.clone(), intervals.clone());
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = Instant::now();
            {
                let mut c = up_current.lock().unwrap();
                if c.index.is_none() || c.responding {
                    c.index = Some(up_intervals.open(now));
                    c.responding = false;
                }
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Recorded before the bytes go on: the buyer may have its answer, and the bench
            // read the intervals, before this task runs again after the write.
            {
                let mut c = current.lock().unwrap();
                c.responding = true;
                if let Some(index) = c.index {
                    intervals.answered(index, Instant::now());
                }
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}
