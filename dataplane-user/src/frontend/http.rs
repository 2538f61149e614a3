//! The HTTP/1.1 side of the servers dataplane runs (the Docker plugin's socket, the
//! metrics endpoint), on hyper: it parses requests and answers malformed ones itself
//! (bad or negative Content-Length, endless header lines), and this module adds what a
//! long-running daemon needs around it:
//! - a cap on request bodies, checked against Content-Length before anything is read;
//! - timeouts for a request's header and body, and for a connection left idle;
//! - an accept loop that backs off when the process is out of descriptors (and the idle
//!   timeout frees them) instead of exiting or spinning.

use std::{
    convert::Infallible,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    body::{Bytes, Incoming},
    Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

/// What a server accepts from its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Time to send a request's header (from the connection's start or the last answer).
    pub header: Duration,
    /// Time to send a request's body once its header is in.
    pub body: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle: Duration,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_body: 1 << 20,
        header: Duration::from_secs(10),
        body: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    /// The defaults; `DATAPLANE_HTTP_IDLE_MS` shortens the idle and header timeouts (for
    /// tests of what happens when they fire).
    pub fn from_env() -> Limits {
        let mut l = Limits::DEFAULT;
        if let Some(ms) = std::env::var("DATAPLANE_HTTP_IDLE_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
            l.idle = Duration::from_millis(ms.max(1));
            l.header = l.header.min(l.idle);
        }
        l
    }
}

/// A request as the handlers see it: path and the whole body.
pub struct Call {
    pub method: hyper::Method,
    pub path: String,
    pub body: Bytes,
}

/// An answer: status, content type, body.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

/// Read `req`'s body within `limits`; the answer to send instead if it cannot be.
async fn read_call(
    req: Request<Incoming>,
    limits: Limits,
    refuse: fn(StatusCode, String) -> Answer,
) -> Result<Call, Answer> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    use hyper::body::Body;
    let declared = req.body().size_hint().lower();
    if declared > limits.max_body as u64 {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {declared} bytes is over the limit of {} bytes", limits.max_body),
        ));
    }
    let body = Limited::new(req.into_body(), limits.max_body);
    match tokio::time::timeout(limits.body, body.collect()).await {
        Ok(Ok(b)) => Ok(Call { method, path, body: b.to_bytes() }),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is over the limit of {} bytes", limits.max_body),
                ))
            } else {
                Err(refuse(StatusCode::BAD_REQUEST, format!("reading the request body: {e}")))
            }
        }
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {} s", limits.body.as_secs()),
        )),
    }
}

/// Per connection: when it last finished a request, and how many are in flight.
struct Activity {
    last: Instant,
    in_flight: usize,
}

/// Serve one connection until the client closes it, it errs, or it stays idle past
/// `limits.idle`. `handle` answers each request; `refuse` shapes the answer (with the status given) to a body that
/// is too large or too slow (each protocol has its own error body).
pub async fn serve_connection<S, H, F>(io: S, limits: Limits, refuse: fn(StatusCode, String) -> Answer, handle: H)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Call) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    let activity = Arc::new(Mutex::new(Activity { last: Instant::now(), in_flight: 0 }));
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (handle, act) = (handle.clone(), act.clone());
        async move {
            act.lock().unwrap_or_else(|p| p.into_inner()).in_flight += 1;
            let a = match read_call(req, limits, refuse).await {
                Ok(call) => handle(call).await,
                Err(a) => a,
            };
            {
                let mut g = act.lock().unwrap_or_else(|p| p.into_inner());
                g.in_flight -= 1;
                g.last = Instant::now();
            }
            let resp = Response::builder()
                .status(a.status)
                .header(hyper::header::CONTENT_TYPE, a.content_type)
                .body(Full::new(Bytes::from(a.body)))
                .expect("a response of valid parts");
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header)
        // Headers and buffered pipelined requests together; an endless header line ends
        // the connection (hyper answers 431) instead of growing memory.
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let tick = (limits.idle / 4).max(Duration::from_millis(100));
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep(tick), if !closing => {
                let g = activity.lock().unwrap_or_else(|p| p.into_inner());
                if g.in_flight == 0 && g.last.elapsed() >= limits.idle {
                    drop(g);
                    // Closes it now (no request in flight), as hyper does between requests.
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// An accept error: wait before accepting again. Out of descriptors (or memory) is a
/// state that passes as idle connections close: keep serving, say so once per episode.
pub struct Backoff {
    delay: Duration,
    said: bool,
    who: &'static str,
}

impl Backoff {
    pub fn new(who: &'static str) -> Backoff {
        Backoff { delay: Duration::from_millis(10), said: false, who }
    }

    /// After a successful accept.
    pub fn reset(&mut self) {
        if self.said {
            eprintln!("{}: accepting connections again", self.who);
        }
        self.delay = Duration::from_millis(10);
        self.said = false;
    }

    /// After a failed accept: sleeps, longer each time (at most 1 s).
    pub async fn wait(&mut self, e: &std::io::Error) {
        if !self.said {
            eprintln!("{}: cannot accept a connection ({e}); retrying while connections close", self.who);
            self.said = true;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(1));
    }
}
