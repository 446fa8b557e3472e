//! The HTTP side of `orchestrator start`: the accept loop and each connection, bounded
//! whatever clients do.
//!
//! - A header-read timeout (`server.header_read_timeout`): a request's headers must arrive
//!   within it, counted from the connection's start or from the first byte of a request
//!   on a kept-alive connection; a client that trickles them (slowloris) is cut off.
//! - An idle timeout (`server.idle_timeout`): a kept-alive connection with no request in
//!   progress and no traffic is closed after it.
//! - A connection cap (`server.max_connections`, WebSockets included: an upgraded
//!   connection keeps its slot until it closes): at the cap the loop stops accepting, so
//!   new connections wait in the listen backlog until one closes; one warning says so per
//!   burst (the cap hit again within a minute is the same burst), not one per connection.
//! - Shutdown: every connection is asked to finish gracefully (an idle one closes at once,
//!   a request in progress is answered), and whatever is left at the deadline is dropped.
//!
//! hyper's own `header_read_timeout` is not used: it starts whenever the connection waits
//! for a request, so on a kept-alive connection it is also the idle timeout, and the two
//! could not differ. A small watchdog per connection keeps both instead, fed by the reads
//! and writes of the socket and by the requests the service is handling.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// The bounds every connection is served under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive within this, from the connection's start or from
    /// the first byte of a request.
    pub header_read_timeout: Duration,
    /// A kept-alive connection with nothing in progress is closed after this.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Limits {
    /// The limits `server.*` configures.
    pub fn from_config(server: &crate::config::ServerConfig) -> Limits {
        let duration = |setting: &crate::config::DurationSetting, default: u64| {
            setting
                .duration()
                .ok()
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(default))
        };
        Limits {
            header_read_timeout: duration(&server.header_read_timeout, 10),
            idle_timeout: duration(&server.idle_timeout, 60),
            max_connections: server.max_connections.max(1) as usize,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the connections
/// finish until `grace` after that instant and drops those still open. Returns the
/// instant `shutdown` completed, from which the rest of the shutdown counts its grace.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Instant {
    raise_open_files_limit(limits.max_connections);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    // When the cap was last hit: the warning is given again only after a quiet minute.
    let mut last_full: Option<Instant> = None;
    let mut accept_errors = AcceptErrors::default();
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if last_full.is_none_or(|at| at.elapsed() >= BURST_QUIET) {
                    tracing::warn!(
                        limit = limits.max_connections,
                        "connection limit reached: {} connections are open (server.max_connections); new connections wait unaccepted until one closes (said once while it keeps happening)",
                        limits.max_connections
                    );
                }
                last_full = Some(Instant::now());
                tokio::select! {
                    _ = &mut shutdown => break,
                    permit = Arc::clone(&slots).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    accept_errors.note(&err);
                    // Out of file descriptors, typically: give closing connections a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Finished connections are reaped as new ones come, so the set stays bounded by
        // the cap.
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(
            stream,
            permit,
            app.clone(),
            limits,
            stop_rx.clone(),
        ));
    }
    let began = Instant::now();
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::from_std(began + grace);
    let drained = tokio::time::timeout_at(deadline, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "closing the connections still open after the grace period"
        );
        connections.shutdown().await;
    }
    began
}

/// File descriptors the process needs beside its connections: the store, logs, step
/// processes' pipes.
const OTHER_FILES: u64 = 512;

/// Raises the soft limit on open files towards the hard one when the cap would not fit
/// under it (many systems start processes at 1024), so that the cap, not `EMFILE`, is
/// what bounds connections. Says so when the hard limit is too low.
fn raise_open_files_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let wanted = max_connections as u64 + OTHER_FILES;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= wanted {
        return;
    }
    let raised = wanted.min(hard);
    if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
        tracing::warn!("cannot raise the open-files limit from {soft} to {raised}: {err}");
        return;
    }
    if raised < wanted {
        tracing::warn!(
            "server.max_connections is {max_connections}, but the open-files limit is {hard}: connections may be refused before the cap (raise `ulimit -n`)"
        );
    }
}

/// A burst of connections over the cap ends after this long without reaching it.
const BURST_QUIET: Duration = Duration::from_secs(60);

/// Accept errors are logged at most once per ten seconds, with how many there were.
#[derive(Default)]
struct AcceptErrors {
    last: Option<Instant>,
    unreported: u64,
}

impl AcceptErrors {
    fn note(&mut self, err: &std::io::Error) {
        self.unreported += 1;
        if self
            .last
            .is_none_or(|last| last.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                count = self.unreported,
                "cannot accept connections: {err} ({} times since the last report)",
                self.unreported
            );
            self.last = Some(Instant::now());
            self.unreported = 0;
        }
    }
}

/// One connection: HTTP/1.1 with upgrades (`/ws`), under the watchdog, until it ends, the
/// watchdog closes it, or the shutdown asks it to finish.
async fn serve_connection(
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        stream,
        activity: Arc::clone(&activity),
        _slot: permit,
    });
    let tower = TowerToHyperService::new(app);
    let requests = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |request| {
        let handling = requests.begin_request();
        let answer = tower.call(request);
        async move {
            let answer = answer.await;
            drop(handling);
            answer
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true);
    let mut connection = pin!(builder.serve_connection(io, service).with_upgrades());
    let mut stopping = false;
    loop {
        let wake = activity.deadline(&limits).unwrap_or_else(|| {
            Instant::now() + limits.header_read_timeout.min(limits.idle_timeout)
        });
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::trace!("connection ended: {err}");
                }
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                if let Some(reason) = activity.expired(&limits, Instant::now()) {
                    tracing::debug!("closing a connection: {reason}");
                    return;
                }
            }
        }
    }
}

/// What the watchdog of one connection knows: whether a request is being handled, when
/// the head of the next one started to arrive, when there was last traffic. Times are
/// milliseconds since the connection started.
struct Activity {
    started: Instant,
    /// Requests handed to the service whose answer has not come yet.
    in_flight: AtomicUsize,
    /// When the first byte of the request being read arrived, plus one (0: none).
    head_since: AtomicU64,
    /// The last read, write or answer.
    last_active: AtomicU64,
    /// Whether a request has been served: before the first one, silence counts against
    /// the header-read timeout, after it against the idle timeout.
    served: AtomicBool,
}

/// Marks a request as handled for as long as it lives.
struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            head_since: AtomicU64::new(0),
            last_active: AtomicU64::new(0),
            served: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_active.store(self.now(), Ordering::SeqCst);
    }

    fn begin_request(self: &Arc<Self>) -> Handling {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(0, Ordering::SeqCst);
        self.served.store(true, Ordering::SeqCst);
        Handling(Arc::clone(self))
    }

    fn read(&self) {
        let now = self.now();
        self.last_active.store(now, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let _ =
                self.head_since
                    .compare_exchange(0, now + 1, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// When the connection is to be closed if nothing changes; `None` while a request is
    /// being handled.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let at = |ms: u64, timeout: Duration| self.started + Duration::from_millis(ms) + timeout;
        match self.head_since.load(Ordering::SeqCst) {
            0 if self.served.load(Ordering::SeqCst) => Some(at(
                self.last_active.load(Ordering::SeqCst),
                limits.idle_timeout,
            )),
            0 => Some(at(0, limits.header_read_timeout)),
            since => Some(at(since - 1, limits.header_read_timeout)),
        }
    }

    /// Why the connection is closed now, if it is.
    fn expired(&self, limits: &Limits, now: Instant) -> Option<&'static str> {
        let deadline = self.deadline(limits)?;
        if now < deadline {
            return None;
        }
        Some(
            if self.head_since.load(Ordering::SeqCst) != 0 || !self.served.load(Ordering::SeqCst) {
                "the request's headers did not arrive within server.header_read_timeout"
            } else {
                "idle for server.idle_timeout"
            },
        )
    }
}

/// The socket, reporting its traffic to the watchdog and holding the connection's slot
/// until it is dropped (after an upgrade, when the WebSocket closes).
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 4,
    };

    #[test]
    fn the_watchdog_times_heads_requests_and_idleness_apart() {
        let activity = Arc::new(Activity::new());
        let start = activity.started;
        // A new connection that sends nothing has the header-read timeout.
        assert_eq!(
            activity.deadline(&LIMITS),
            Some(start + Duration::from_secs(10))
        );
        assert!(activity
            .expired(&LIMITS, start + Duration::from_secs(11))
            .is_some_and(|r| r.contains("header_read_timeout")));
        // Being handled: no deadline.
        let handling = activity.begin_request();
        assert_eq!(activity.deadline(&LIMITS), None);
        activity.read();
        assert_eq!(activity.deadline(&LIMITS), None);
        drop(handling);
        // Answered: the idle timeout, from the answer.
        let idle = activity.deadline(&LIMITS).unwrap();
        assert!(idle >= start + Duration::from_secs(60), "{idle:?}");
        assert!(activity
            .expired(&LIMITS, idle)
            .is_some_and(|r| r.contains("idle_timeout")));
        // The first byte of the next request: the header-read timeout from it.
        activity.read();
        let head = activity.deadline(&LIMITS).unwrap();
        assert!(head < idle, "{head:?} {idle:?}");
        assert!(activity
            .expired(&LIMITS, head - Duration::from_millis(1))
            .is_none());
        // More bytes of the same head do not extend it.
        activity.read();
        assert_eq!(activity.deadline(&LIMITS), Some(head));
    }
}
