//! A fault-injecting HTTP proxy. Each rule applies once, to the next request whose path
//! starts with its prefix; requests without a rule pass through untouched.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt as _;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One failure to inject.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status (with these headers) instead of forwarding.
    Status(u16, Vec<(&'static str, String)>),
    /// Forward, but break the connection after this many body bytes.
    ResetAfter(u64),
    /// Forward, but end the body cleanly (chunked, no Content-Length) after this many bytes.
    Truncate(u64),
    /// Forward without the `Range` header: the server answers 200 with the whole file.
    IgnoreRange,
    /// Forward, then stop sending after this many bytes, keeping the connection open.
    StallAfter(u64),
    /// Forward, flipping one byte of the body.
    Corrupt,
    /// Forward the body at this many bytes a second (a slow path, never silent long enough to
    /// time out).
    Trickle(u64),
}

/// The faults to inject, in order, and how many were.
#[derive(Debug, Default)]
pub struct FaultPlan {
    rules: Mutex<VecDeque<(String, Fault)>>,
    /// Faults injected so far.
    pub injected: AtomicU64,
}

impl FaultPlan {
    /// Adds a rule: the next request whose path starts with `prefix` gets `fault`.
    pub fn push(&self, prefix: &str, fault: Fault) {
        self.rules.lock().expect("plan").push_back((prefix.to_owned(), fault));
    }

    /// Adds `n` copies of a rule.
    pub fn push_n(&self, prefix: &str, fault: Fault, n: usize) {
        for _ in 0..n {
            self.push(prefix, fault.clone());
        }
    }

    fn take(&self, path: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().expect("plan");
        let i = rules.iter().position(|(p, _)| path.starts_with(p.as_str()))?;
        self.injected.fetch_add(1, Relaxed);
        rules.remove(i).map(|(_, f)| f)
    }

    /// Rules not yet used.
    pub fn pending(&self) -> usize {
        self.rules.lock().expect("plan").len()
    }
}

struct ProxyState {
    upstream: String,
    plan: Arc<FaultPlan>,
    client: reqwest::Client,
}

/// Serves the proxy on `listener`, forwarding to `upstream` (`http://host:port`).
pub fn spawn(listener: tokio::net::TcpListener, upstream: String, plan: Arc<FaultPlan>) -> tokio::task::JoinHandle<()> {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let state = Arc::new(ProxyState { upstream, plan, client });
    let app = axum::Router::new().fallback(handle).with_state(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

/// Binds a proxy listener on an ephemeral loopback port.
pub async fn bind() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

async fn handle(State(st): State<Arc<ProxyState>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let fault = st.plan.take(uri.path());
    if let Some(Fault::Status(code, extra)) = &fault {
        let mut r = Response::new(Body::from(format!("{{\"error\":\"injected {code}\"}}")));
        *r.status_mut() = StatusCode::from_u16(*code).expect("status");
        for (k, v) in extra {
            r.headers_mut().insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        return r;
    }
    let url = format!("{}{}", st.upstream, uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    // The Host header goes through, as a reverse proxy keeps it: the server's pagination links
    // then name the proxy, as the Hub's name its public host.
    let mut fwd = headers.clone();
    if matches!(fault, Some(Fault::IgnoreRange)) {
        fwd.remove("range");
    }
    let up = match st.client.request(method, url).headers(fwd).send().await {
        Ok(r) => r,
        Err(e) => {
            let mut r = Response::new(Body::from(e.to_string()));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            return r;
        }
    };
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = up.status();
    for (k, v) in up.headers() {
        if k != "transfer-encoding" && k != "connection" {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
    }
    if matches!(fault, Some(Fault::Truncate(_))) {
        resp.headers_mut().remove("content-length");
    }
    let limit = match fault {
        Some(Fault::ResetAfter(n) | Fault::Truncate(n) | Fault::StallAfter(n)) => Some(n),
        _ => None,
    };
    let corrupt = matches!(fault, Some(Fault::Corrupt));
    let mut sent = 0u64;
    let mut flipped = false;
    let body = up.bytes_stream().map(move |r| r.map_err(std::io::Error::other)).flat_map(move |item| {
        let mut out: Vec<Result<Bytes, std::io::Error>> = Vec::new();
        match item {
            Err(e) => out.push(Err(e)),
            Ok(mut b) => {
                if corrupt && !flipped && !b.is_empty() {
                    let mut v = b.to_vec();
                    v[0] ^= 0xff;
                    b = Bytes::from(v);
                    flipped = true;
                }
                match limit {
                    Some(n) if sent + b.len() as u64 >= n => {
                        let keep = (n - sent) as usize;
                        out.push(Ok(b.slice(..keep)));
                        sent = n;
                        out.push(Err(std::io::Error::other("cut")));
                    }
                    _ => {
                        sent += b.len() as u64;
                        out.push(Ok(b));
                    }
                }
            }
        }
        futures_util::stream::iter(out)
    });
    let kind = fault.clone();
    // What happens at the cut depends on the fault: an error (reset), a clean end (truncate),
    // or silence (stall).
    let mut cut = false;
    let body = body.filter_map(move |item| {
        let kind = kind.clone();
        let already = cut;
        if item.is_err() {
            cut = true;
        }
        async move {
            if already {
                return None;
            }
            match (item, kind) {
                (Err(_), Some(Fault::Truncate(_))) => None,
                (Err(_), Some(Fault::StallAfter(_))) => {
                    std::future::pending::<()>().await;
                    None
                }
                (item, _) => Some(item),
            }
        }
    });
    if let Some(Fault::Trickle(rate)) = fault {
        // A tenth of a second's worth every tenth of a second.
        let piece = (rate / 10).max(1) as usize;
        let body = body
            .flat_map(move |item| {
                let pieces: Vec<Result<Bytes, std::io::Error>> = match item {
                    Ok(b) => (0..b.len()).step_by(piece).map(|i| Ok(b.slice(i..(i + piece).min(b.len())))).collect(),
                    Err(e) => vec![Err(e)],
                };
                futures_util::stream::iter(pieces)
            })
            .then(|item| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                item
            });
        *resp.body_mut() = Body::from_stream(body);
        return resp;
    }
    *resp.body_mut() = Body::from_stream(body);
    resp
}
