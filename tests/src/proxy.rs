//! A TCP fault proxy on 127.0.0.1, placed between an agent and the coordinator to break the
//! link on purpose, controlled at run time from the (synchronous) test thread.
//!
//! Faults:
//! - [`Fault::Pass`]: forward both ways (with the optional added latency per chunk).
//! - [`Fault::Cut`]: the listening socket is closed, so new connections are refused, and
//!   every open connection is reset (RST) on both sides. Like a pulled cable plus a router
//!   that answers with resets.
//! - [`Fault::Blackhole`]: connections are accepted but nothing is forwarded either way; open
//!   connections stall (the bytes wait in the kernel buffers) and resume when the fault is
//!   lifted, as TCP does across a short outage.
//!
//! Link shapes, on top of the fault (both off by default):
//! - a bandwidth limit ([`FaultProxy::set_bandwidth`]): each direction is one link shared
//!   by every connection, paced to at most that many bytes a second, as a slow uplink;
//! - a cut every N bytes ([`FaultProxy::cut_every`]): a connection is reset (both sides)
//!   once it has carried exactly N bytes towards the client, so a download through it breaks
//!   at byte counts a test knows, independent of timing.
//!
//! The proxy runs on its own small tokio runtime, so it works from plain `#[test]`s and from
//! async ones. Changing the fault waits until it is in force (listener closed or reopened,
//! connections reset), so a scenario never races its own fault. It must never listen on
//! anything but loopback, and never alter the bytes it forwards.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::error::{HarnessError, Result};

/// What the proxy does with traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Cut,
    Blackhole,
}

/// Counters, for asserting that traffic really went through the proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub accepted: AtomicU64,
    /// Connections opened to the target.
    pub upstream_connects: AtomicU64,
    /// Bytes forwarded client → target.
    pub bytes_up: AtomicU64,
    /// Bytes forwarded target → client.
    pub bytes_down: AtomicU64,
    /// Connections reset because of a cut.
    pub resets: AtomicU64,
    /// Connections currently open on the client side.
    pub live: AtomicUsize,
    /// Connections reset by [`FaultProxy::cut_every`].
    pub byte_cuts: AtomicU64,
}

/// One direction of the link: bytes through it are paced to `bytes_per_sec` (0: no limit),
/// whichever connection carries them.
#[derive(Debug, Default)]
struct Link {
    bytes_per_sec: AtomicU64,
    /// When the link is free again (the last paced chunk has gone through).
    free_at: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Link {
    /// Waits until `n` more bytes fit through the link.
    async fn pace(&self, n: usize) {
        let rate = self.bytes_per_sec.load(Ordering::SeqCst);
        if rate == 0 {
            return;
        }
        let due = {
            let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
            let now = tokio::time::Instant::now();
            let start = free_at.map_or(now, |t| t.max(now));
            let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
            *free_at = Some(due);
            due
        };
        tokio::time::sleep_until(due).await;
    }
}

/// The link's shape: bandwidth each way and the byte count after which a connection is cut.
#[derive(Debug, Default)]
struct Shape {
    up: Link,
    down: Link,
    /// Reset a connection after this many bytes towards the client (0: never).
    cut_every: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Control {
    fault: Fault,
    generation: u64,
}

/// A running fault proxy. Dropping it stops it and closes every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    control: watch::Sender<Control>,
    applied: Arc<AtomicU64>,
    latency_ms: Arc<AtomicU64>,
    shape: Arc<Shape>,
    stats: Arc<ProxyStats>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("fault", &self.fault())
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:<free port>` forwarding to `target`, in [`Fault::Pass`].
    pub fn start(target: SocketAddr) -> Result<FaultProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .map_err(|e| HarnessError::io("starting the fault proxy's runtime", e))?;
        let (control, control_rx) = watch::channel(Control {
            fault: Fault::Pass,
            generation: 0,
        });
        let applied = Arc::new(AtomicU64::new(0));
        let latency_ms = Arc::new(AtomicU64::new(0));
        let shape = Arc::new(Shape::default());
        let stats = Arc::new(ProxyStats::default());
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        runtime.spawn(listen_loop(
            target,
            control_rx,
            Arc::clone(&applied),
            Arc::clone(&latency_ms),
            Arc::clone(&shape),
            Arc::clone(&stats),
            bound_tx,
        ));
        let addr = bound_rx
            .recv()
            .map_err(|_| HarnessError::Proxy("the listener task ended before binding".into()))?
            .map_err(|e| HarnessError::io("binding the fault proxy on 127.0.0.1:0", e))?;
        Ok(FaultProxy {
            addr,
            target,
            control,
            applied,
            latency_ms,
            shape,
            stats,
            runtime: Some(runtime),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where traffic goes.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }

    pub fn fault(&self) -> Fault {
        self.control.borrow().fault
    }

    /// Forward traffic again.
    pub fn pass(&self) -> Result<()> {
        self.set_fault(Fault::Pass)
    }

    /// Refuse new connections and reset every open one.
    pub fn cut(&self) -> Result<()> {
        self.set_fault(Fault::Cut)
    }

    /// Accept connections but forward nothing.
    pub fn blackhole(&self) -> Result<()> {
        self.set_fault(Fault::Blackhole)
    }

    /// Adds `latency` before every forwarded chunk, both ways (zero to remove it).
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Paces each direction of the link to at most `bytes_per_sec` (0 to remove the limit),
    /// shared by all connections. 2 Mbit/s is `250_000`.
    pub fn set_bandwidth(&self, bytes_per_sec: u64) {
        self.shape
            .up
            .bytes_per_sec
            .store(bytes_per_sec, Ordering::SeqCst);
        self.shape
            .down
            .bytes_per_sec
            .store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Resets every connection once it has carried exactly `bytes` towards the client (0:
    /// never). Applies to connections opened afterwards and to the bytes open ones carry
    /// from now on.
    pub fn cut_every(&self, bytes: u64) {
        self.shape.cut_every.store(bytes, Ordering::SeqCst);
    }

    /// Switches the fault and waits until it is in force.
    pub fn set_fault(&self, fault: Fault) -> Result<()> {
        let mut generation = 0;
        self.control.send_modify(|c| {
            c.generation += 1;
            c.fault = fault;
            generation = c.generation;
        });
        crate::eventually(
            &format!("the fault proxy to apply {fault:?}"),
            crate::patience(Duration::from_secs(30)),
            || {
                let applied = self.applied.load(Ordering::SeqCst);
                anyhow::ensure!(
                    applied >= generation,
                    "listener at generation {applied}, want {generation}"
                );
                if fault == Fault::Cut {
                    let live = self.stats.live.load(Ordering::SeqCst);
                    anyhow::ensure!(live == 0, "{live} connections not reset yet");
                }
                Ok(())
            },
        )
        .map(|_| ())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn listen_loop(
    target: SocketAddr,
    mut control: watch::Receiver<Control>,
    applied: Arc<AtomicU64>,
    latency_ms: Arc<AtomicU64>,
    shape: Arc<Shape>,
    stats: Arc<ProxyStats>,
    bound: std::sync::mpsc::Sender<std::io::Result<SocketAddr>>,
) {
    let first = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let (mut listener, addr) = match first.and_then(|l| l.local_addr().map(|a| (l, a))) {
        Ok((listener, addr)) => {
            let _ = bound.send(Ok(addr));
            (Some(listener), addr)
        }
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    loop {
        let now = *control.borrow_and_update();
        if now.fault == Fault::Cut {
            // Closing the listener makes new connections fail with "connection refused".
            listener = None;
            applied.store(now.generation, Ordering::SeqCst);
            if control.changed().await.is_err() {
                return;
            }
            continue;
        }
        let active = match listener.take() {
            Some(l) => l,
            None => match bind(addr) {
                Ok(l) => l,
                Err(_) => {
                    // The port is briefly unavailable; try again shortly.
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    continue;
                }
            },
        };
        applied.store(now.generation, Ordering::SeqCst);
        loop {
            tokio::select! {
                accepted = active.accept() => {
                    if let Ok((client, _)) = accepted {
                        stats.accepted.fetch_add(1, Ordering::SeqCst);
                        stats.live.fetch_add(1, Ordering::SeqCst);
                        let conn = Connection {
                            target,
                            control: control.clone(),
                            latency_ms: Arc::clone(&latency_ms),
                            shape: Arc::clone(&shape),
                            stats: Arc::clone(&stats),
                        };
                        tokio::spawn(async move {
                            let stats = Arc::clone(&conn.stats);
                            conn.run(client).await;
                            stats.live.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                }
                changed = control.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let next = *control.borrow();
                    if next.fault == Fault::Cut {
                        break;
                    }
                    applied.store(next.generation, Ordering::SeqCst);
                }
            }
        }
        // `active` is dropped here: the listener closes before the cut is applied.
        drop(active);
    }
}

struct Connection {
    target: SocketAddr,
    control: watch::Receiver<Control>,
    latency_ms: Arc<AtomicU64>,
    shape: Arc<Shape>,
    stats: Arc<ProxyStats>,
}

fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

impl Connection {
    /// Waits while the fault is `Blackhole`; returns the fault once it is not.
    async fn past_blackhole(&mut self) -> Option<Fault> {
        loop {
            let fault = self.control.borrow_and_update().fault;
            if fault != Fault::Blackhole {
                return Some(fault);
            }
            self.control.changed().await.ok()?;
        }
    }

    /// Re-checks the fault after a read: bytes read just as a blackhole began wait for it
    /// to lift; after a cut they are dropped with the connection (returns false).
    async fn may_forward(&mut self) -> bool {
        let pass = matches!(self.past_blackhole().await, Some(Fault::Pass));
        if !pass {
            self.stats.resets.fetch_add(1, Ordering::SeqCst);
        }
        pass
    }

    async fn delay(&self) {
        let ms = self.latency_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    async fn run(mut self, client: TcpStream) {
        match self.past_blackhole().await {
            Some(Fault::Pass) => {}
            _ => {
                self.stats.resets.fetch_add(1, Ordering::SeqCst);
                reset(client);
                return;
            }
        }
        let upstream = match TcpStream::connect(self.target).await {
            Ok(s) => s,
            Err(_) => {
                reset(client);
                return;
            }
        };
        self.stats.upstream_connects.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (mut client, mut upstream) = (client, upstream);
        let mut up_buf = vec![0u8; 16 * 1024];
        let mut down_buf = vec![0u8; 16 * 1024];
        let (mut client_eof, mut upstream_eof) = (false, false);
        // Bytes this connection carried towards the client (for `cut_every`).
        let mut carried_down = 0u64;
        while !(client_eof && upstream_eof) {
            match self.past_blackhole().await {
                Some(Fault::Pass) => {}
                _ => {
                    self.stats.resets.fetch_add(1, Ordering::SeqCst);
                    reset(client);
                    reset(upstream);
                    return;
                }
            }
            tokio::select! {
                read = client.read(&mut up_buf), if !client_eof => match read {
                    Ok(0) => {
                        client_eof = true;
                        let _ = upstream.shutdown().await;
                    }
                    Ok(n) => {
                        if !self.may_forward().await {
                            reset(client);
                            reset(upstream);
                            return;
                        }
                        self.delay().await;
                        self.shape.up.pace(n).await;
                        if upstream.write_all(&up_buf[..n]).await.is_err() {
                            reset(client);
                            reset(upstream);
                            return;
                        }
                        self.stats.bytes_up.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(_) => {
                        reset(client);
                        reset(upstream);
                        return;
                    }
                },
                read = upstream.read(&mut down_buf), if !upstream_eof => match read {
                    Ok(0) => {
                        upstream_eof = true;
                        let _ = client.shutdown().await;
                    }
                    Ok(n) => {
                        if !self.may_forward().await {
                            reset(client);
                            reset(upstream);
                            return;
                        }
                        self.delay().await;
                        let cut_every = self.shape.cut_every.load(Ordering::SeqCst);
                        let room = if cut_every == 0 {
                            usize::MAX
                        } else {
                            usize::try_from(cut_every.saturating_sub(carried_down))
                                .unwrap_or(usize::MAX)
                        };
                        let send = n.min(room);
                        self.shape.down.pace(send).await;
                        if client.write_all(&down_buf[..send]).await.is_err() {
                            reset(client);
                            reset(upstream);
                            return;
                        }
                        carried_down += send as u64;
                        self.stats.bytes_down.fetch_add(send as u64, Ordering::SeqCst);
                        if send == room {
                            // Exactly `cut_every` bytes went through: the link drops.
                            let _ = client.flush().await;
                            self.stats.byte_cuts.fetch_add(1, Ordering::SeqCst);
                            reset(client);
                            reset(upstream);
                            return;
                        }
                    }
                    Err(_) => {
                        reset(client);
                        reset(upstream);
                        return;
                    }
                },
                changed = self.control.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read as _, Write as _};
    use std::net::TcpStream as StdStream;
    use std::sync::atomic::AtomicUsize;

    /// A plain std echo server; counts the connections it accepted.
    fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&count);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, count)
    }

    fn connect(addr: SocketAddr) -> std::io::Result<StdStream> {
        let stream = StdStream::connect(addr)?;
        // A safety net so a broken proxy fails the test instead of hanging it.
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(stream)
    }

    fn echo(stream: &mut StdStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        stream.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn pass_forwards_both_ways() {
        let (target, _) = echo_server();
        let proxy = FaultProxy::start(target).unwrap();
        let mut stream = connect(proxy.addr()).unwrap();
        assert_eq!(echo(&mut stream, b"hello").unwrap(), b"hello");
        // The counters move just after the bytes do.
        crate::eventually(
            "the byte counters",
            crate::patience(Duration::from_secs(30)),
            || {
                let up = proxy.stats().bytes_up.load(Ordering::SeqCst);
                let down = proxy.stats().bytes_down.load(Ordering::SeqCst);
                anyhow::ensure!((up, down) == (5, 5), "up {up}, down {down}");
                Ok(())
            },
        )
        .unwrap();
    }

    #[test]
    fn cut_resets_open_streams_refuses_new_ones_and_pass_restores() {
        let (target, _) = echo_server();
        let proxy = FaultProxy::start(target).unwrap();
        let mut stream = connect(proxy.addr()).unwrap();
        assert_eq!(echo(&mut stream, b"before").unwrap(), b"before");

        proxy.cut().unwrap();
        // The open stream was reset: reading fails with a reset (or sees the end).
        let mut buf = [0u8; 16];
        match stream.read(&mut buf) {
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
            Ok(n) => assert_eq!(n, 0, "a cut stream delivered {n} bytes"),
        }
        // New connections are refused outright.
        let err = StdStream::connect(proxy.addr()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        assert!(proxy.stats().resets.load(Ordering::SeqCst) >= 1);

        proxy.pass().unwrap();
        let mut again = connect(proxy.addr()).unwrap();
        assert_eq!(echo(&mut again, b"after").unwrap(), b"after");
    }

    #[test]
    fn blackhole_accepts_but_forwards_nothing_until_lifted() {
        let (target, upstream_accepts) = echo_server();
        let proxy = FaultProxy::start(target).unwrap();
        let mut open = connect(proxy.addr()).unwrap();
        assert_eq!(echo(&mut open, b"one").unwrap(), b"one");

        proxy.blackhole().unwrap();
        // A new connection is accepted, but never reaches the target.
        let mut fresh = connect(proxy.addr()).unwrap();
        fresh.write_all(b"lost?").unwrap();
        open.write_all(b"stalled").unwrap();
        crate::eventually(
            "the proxy to accept the new connection",
            crate::patience(Duration::from_secs(30)),
            || {
                anyhow::ensure!(proxy.stats().accepted.load(Ordering::SeqCst) == 2);
                Ok(())
            },
        )
        .unwrap();
        open.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 16];
        let err = open.read(&mut buf).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{err}"
        );
        assert_eq!(upstream_accepts.load(Ordering::SeqCst), 1);

        // Lifting the blackhole lets both streams through, nothing lost.
        proxy.pass().unwrap();
        open.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut got = [0u8; 7];
        open.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"stalled");
        let mut got = [0u8; 5];
        fresh.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"lost?");
        assert_eq!(upstream_accepts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn latency_delays_each_chunk() {
        let (target, _) = echo_server();
        let proxy = FaultProxy::start(target).unwrap();
        proxy.set_latency(Duration::from_millis(150));
        let mut stream = connect(proxy.addr()).unwrap();
        let start = std::time::Instant::now();
        assert_eq!(echo(&mut stream, b"slow").unwrap(), b"slow");
        // A lower bound only: one delay up, one down.
        assert!(start.elapsed() >= Duration::from_millis(300));
        proxy.set_latency(Duration::ZERO);
        assert_eq!(echo(&mut stream, b"fast").unwrap(), b"fast");
    }

    #[test]
    fn cut_every_resets_a_connection_after_exactly_that_many_bytes() {
        let (target, _) = echo_server();
        let proxy = FaultProxy::start(target).unwrap();
        proxy.cut_every(10_000);
        let mut stream = connect(proxy.addr()).unwrap();
        let msg = vec![7u8; 25_000];
        // The echo comes back in chunks; the proxy lets exactly 10,000 bytes through.
        let writer = {
            let mut w = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = w.write_all(&msg);
            })
        };
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = writer.join();
        // The proxy forwarded exactly 10,000 bytes (the reset may discard some of them
        // from the client's buffer, as a real broken link can).
        assert_eq!(proxy.stats().bytes_down.load(Ordering::SeqCst), 10_000);
        assert!(got.len() <= 10_000 && got.iter().all(|b| *b == 7));
        assert_eq!(proxy.stats().byte_cuts.load(Ordering::SeqCst), 1);
        // A new connection gets its own 10,000 bytes.
        proxy.cut_every(0);
        let mut again = connect(proxy.addr()).unwrap();
        assert_eq!(echo(&mut again, b"whole").unwrap(), b"whole");
    }

    #[test]
    fn bandwidth_paces_the_link() {
        let (target, _) = echo_server();
        let proxy = FaultProxy::start(target).unwrap();
        proxy.set_bandwidth(100_000);
        let mut stream = connect(proxy.addr()).unwrap();
        let msg = vec![1u8; 40_000];
        let start = std::time::Instant::now();
        assert_eq!(echo(&mut stream, &msg).unwrap(), msg);
        // A lower bound only: 40,000 bytes each way at 100,000 bytes a second.
        assert!(
            start.elapsed() >= Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
        proxy.set_bandwidth(0);
        assert_eq!(echo(&mut stream, b"fast").unwrap(), b"fast");
    }

    #[test]
    fn cut_then_pass_many_times_keeps_the_same_address() {
        let (target, _) = echo_server();
        let proxy = FaultProxy::start(target).unwrap();
        for round in 0..5 {
            proxy.cut().unwrap();
            assert!(StdStream::connect(proxy.addr()).is_err(), "round {round}");
            proxy.pass().unwrap();
            let mut s = connect(proxy.addr()).unwrap();
            assert_eq!(echo(&mut s, b"x").unwrap(), b"x", "round {round}");
        }
    }
}
