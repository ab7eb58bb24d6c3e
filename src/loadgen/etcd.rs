//! `firetower bench etcd-puts`: the control-plane peer of `bench commits`. Writers put fresh
//! keys into an etcd cluster through its v3 JSON gateway (`POST /v3/kv/put`, base64 key and
//! value) over HTTP/1.1 keep-alive, one connection per writer, writers spread over the
//! endpoints the way etcd's own client balances; each writer waits for its put to be
//! acknowledged (committed by a quorum, fsync on) before the next, like `bench commits`.
//!
//! A failed put (refused, timed out, connection lost) is retried on the next endpoint with
//! the same key until it succeeds or the round ends; its latency runs from the first attempt,
//! so a leader failover shows as the time writing stopped (`max_gap_ms`: no put succeeded
//! anywhere; `max_writer_gap_ms`: the longest one writer went without a success).
//!
//! The HTTP client is deliberately small: one request at a time per connection, responses
//! with `Content-Length` or chunked bodies, every size bounded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use bytes::{Buf, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::find;
use super::stats::{latency_histogram, record};

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 1024 * 1024;
/// Pause before retrying a failed put on the next endpoint.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// `firetower bench etcd-puts`.
#[derive(clap::Args, Debug)]
pub struct EtcdPutsArgs {
    /// etcd client URLs (`http://IP:PORT`, literal IPs), comma separated; writers are spread
    /// over them round robin.
    #[arg(long)]
    endpoints: String,
    /// Concurrent writer counts to measure, comma separated.
    #[arg(long, default_value = "1,16,256")]
    writers: String,
    /// Seconds of measurement per writer count.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Bytes of each value (a subscription record is about this small).
    #[arg(long, default_value_t = 16)]
    value_size: usize,
    /// Milliseconds one attempt may take before it is abandoned and retried elsewhere.
    #[arg(long, default_value_t = 2_000)]
    request_timeout_ms: u64,
    /// Print one JSON object per writer count instead of a table.
    #[arg(long)]
    json: bool,
}

/// What one writer count measured.
#[derive(Debug, Clone, Serialize)]
pub struct PutsResult {
    /// `etcd`.
    pub system: &'static str,
    /// Concurrent writers.
    pub writers: usize,
    /// Length of the round, seconds.
    pub seconds: f64,
    /// Puts acknowledged.
    pub puts: u64,
    /// Puts acknowledged per second.
    pub puts_per_sec: f64,
    /// Median put latency (first attempt to acknowledgement), ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// Failed attempts (each retried).
    pub errors: u64,
    /// First failure, if any.
    pub first_error: Option<String>,
    /// Longest time no put succeeded anywhere, ms.
    pub max_gap_ms: f64,
    /// Longest time one writer went without a successful put, ms.
    pub max_writer_gap_ms: f64,
    /// The machine's 1-minute load average at the end of the round.
    pub load_average: Option<f64>,
}

/// Run `bench etcd-puts`.
pub async fn etcd_puts(args: EtcdPutsArgs) -> anyhow::Result<()> {
    let endpoints = parse_endpoints(&args.endpoints)?;
    let writer_counts = parse_writers(&args.writers)?;
    if args.duration == 0 {
        bail!("--duration must be at least 1 second");
    }
    if args.value_size > 64 * 1024 {
        bail!("--value-size: at most 65536 bytes");
    }
    if args.request_timeout_ms == 0 {
        bail!("--request-timeout-ms must be above 0");
    }
    let run_id: u32 = rand::random();
    if !args.json {
        println!(
            "{:>8} {:>12} {:>10} {:>10} {:>10} {:>8} {:>10}",
            "writers", "puts/s", "p50 ms", "p99 ms", "max ms", "errors", "gap ms"
        );
    }
    for n in writer_counts {
        let r = puts_round(
            &endpoints,
            n,
            Duration::from_secs(args.duration),
            args.value_size,
            Duration::from_millis(args.request_timeout_ms),
            run_id,
        )
        .await?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{:>8} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>8} {:>10.1}",
                r.writers, r.puts_per_sec, r.p50_ms, r.p99_ms, r.max_ms, r.errors, r.max_gap_ms
            );
            if let Some(e) = &r.first_error {
                println!("first error: {e}");
            }
        }
    }
    Ok(())
}

/// Parse `1,16,256`.
pub fn parse_writers(text: &str) -> anyhow::Result<Vec<usize>> {
    text.split(',')
        .map(|w| {
            w.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0 && *n <= 10_000)
                .ok_or_else(|| anyhow!("--writers {w:?}: expected 1..=10000"))
        })
        .collect()
}

/// Parse `http://127.0.0.1:2379,http://127.0.0.1:22379` (literal IPs, no TLS).
fn parse_endpoints(text: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let out: Vec<SocketAddr> = text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            let rest = t.strip_prefix("http://").unwrap_or(t).trim_end_matches('/');
            if t.starts_with("https://") {
                bail!("{t:?}: https is not supported (start etcd with http:// client URLs)");
            }
            rest.parse::<SocketAddr>()
                .with_context(|| format!("{t:?}: expected http://IP:PORT with a literal IP"))
        })
        .collect::<Result<_, _>>()?;
    if out.is_empty() {
        bail!("--endpoints: give at least one http://IP:PORT");
    }
    Ok(out)
}

/// "How long did writing stop": the longest interval without a success, over all writers
/// (`global`) and per writer. Times are microseconds since the round started.
#[derive(Debug, Default)]
pub struct GapTracker {
    last_success_us: AtomicU64,
    max_gap_us: AtomicU64,
    max_writer_gap_us: AtomicU64,
}

impl GapTracker {
    /// A success of a writer whose previous success (or start) was at `*writer_last`.
    pub fn success(&self, now_us: u64, writer_last: &mut u64) {
        let prev = self.last_success_us.fetch_max(now_us, Ordering::Relaxed);
        if now_us > prev {
            self.max_gap_us.fetch_max(now_us - prev, Ordering::Relaxed);
        }
        self.max_writer_gap_us
            .fetch_max(now_us.saturating_sub(*writer_last), Ordering::Relaxed);
        *writer_last = now_us;
    }

    /// A writer stopped at `end_us`: a stall that never ended counts up to there.
    pub fn writer_done(&self, end_us: u64, writer_last: u64) {
        self.max_writer_gap_us
            .fetch_max(end_us.saturating_sub(writer_last), Ordering::Relaxed);
    }

    /// (global, per writer) longest gaps in ms, closing the global one at `end_us`.
    pub fn finish(&self, end_us: u64) -> (f64, f64) {
        let last = self.last_success_us.load(Ordering::Relaxed);
        let global = self
            .max_gap_us
            .load(Ordering::Relaxed)
            .max(end_us.saturating_sub(last));
        (
            global as f64 / 1000.0,
            self.max_writer_gap_us.load(Ordering::Relaxed) as f64 / 1000.0,
        )
    }
}

async fn puts_round(
    endpoints: &[SocketAddr],
    writers: usize,
    duration: Duration,
    value_size: usize,
    request_timeout: Duration,
    run_id: u32,
) -> anyhow::Result<PutsResult> {
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let gaps = Arc::new(GapTracker::default());
    let start = Instant::now();
    let deadline = start + duration;
    let b64 = &base64::engine::general_purpose::STANDARD;
    let value = b64.encode(vec![b'v'; value_size]);
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let endpoints = endpoints.to_vec();
        let (errors, first_error, gaps) = (errors.clone(), first_error.clone(), gaps.clone());
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = latency_histogram();
            let mut endpoint = w % endpoints.len();
            let mut conn: Option<HttpConn> = None;
            let mut n = 0u64;
            let mut last_us = 0u64;
            let mut body = Vec::with_capacity(value.len() + 128);
            while Instant::now() < deadline {
                let key = b64.encode(format!("bench/{run_id:08x}/{writers}/{w}/{n}"));
                n += 1;
                body.clear();
                body.extend_from_slice(b"{\"key\":\"");
                body.extend_from_slice(key.as_bytes());
                body.extend_from_slice(b"\",\"value\":\"");
                body.extend_from_slice(value.as_bytes());
                body.extend_from_slice(b"\"}");
                let t0 = Instant::now();
                // Retry the same put until acknowledged or the round is over.
                let done = loop {
                    let attempt = async {
                        if conn.is_none() {
                            conn = Some(HttpConn::connect(endpoints[endpoint]).await?);
                        }
                        match conn.as_mut() {
                            Some(c) => c.post_put(&body).await,
                            None => Err(anyhow!("not connected")),
                        }
                    };
                    match tokio::time::timeout(request_timeout, attempt).await {
                        Ok(Ok(())) => break true,
                        outcome => {
                            let e = match outcome {
                                Ok(Err(e)) => format!("{}: {e:#}", endpoints[endpoint]),
                                _ => format!(
                                    "{}: no answer within {request_timeout:?}",
                                    endpoints[endpoint]
                                ),
                            };
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            conn = None;
                            endpoint = (endpoint + 1) % endpoints.len();
                            if Instant::now() + RETRY_PAUSE >= deadline {
                                break false;
                            }
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                };
                if !done {
                    break;
                }
                record(&mut hist, t0.elapsed().as_micros() as u64);
                gaps.success(start.elapsed().as_micros() as u64, &mut last_us);
            }
            gaps.writer_done(
                (deadline - start).as_micros() as u64,
                last_us.min((deadline - start).as_micros() as u64),
            );
            hist
        }));
    }
    let mut total = latency_histogram();
    for t in tasks {
        let h = t.await.map_err(|e| anyhow!("writer task: {e}"))?;
        // Same bounds on both sides, so `add` cannot fail.
        let _ = total.add(&h);
    }
    let seconds = start.elapsed().as_secs_f64();
    let (max_gap_ms, max_writer_gap_ms) = gaps.finish(duration.as_micros() as u64);
    let first_error = first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(PutsResult {
        system: "etcd",
        writers,
        seconds,
        puts: total.len(),
        puts_per_sec: total.len() as f64 / seconds,
        p50_ms: total.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: total.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: total.max() as f64 / 1000.0,
        errors: errors.load(Ordering::Relaxed),
        first_error,
        max_gap_ms,
        max_writer_gap_ms,
        load_average: super::procstat::load_average(),
    })
}

/// One keep-alive HTTP/1.1 connection to an etcd member.
#[derive(Debug)]
struct HttpConn {
    addr: SocketAddr,
    stream: TcpStream,
    buf: BytesMut,
}

impl HttpConn {
    async fn connect(addr: SocketAddr) -> anyhow::Result<HttpConn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            addr,
            stream,
            buf: BytesMut::with_capacity(1024),
        })
    }

    /// POST /v3/kv/put; Ok once etcd answered 200 with a response header.
    async fn post_put(&mut self, body: &[u8]) -> anyhow::Result<()> {
        let head = format!(
            "POST /v3/kv/put HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let mut request = Vec::with_capacity(head.len() + body.len());
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(body);
        self.stream.write_all(&request).await?;
        let response = self.read_response().await?;
        if response.status != 200 {
            bail!(
                "HTTP {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body[..response.body.len().min(300)])
            );
        }
        if find(&response.body, b"\"header\"").is_none() {
            bail!(
                "unexpected put response: {}",
                String::from_utf8_lossy(&response.body[..response.body.len().min(300)])
            );
        }
        if response.close {
            bail!("server closed the keep-alive connection");
        }
        Ok(())
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.buf.len() > MAX_HEAD + MAX_BODY {
            bail!("response larger than {} bytes", MAX_HEAD + MAX_BODY);
        }
        self.buf.reserve(4096);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            bail!("connection closed by the server");
        }
        Ok(())
    }

    async fn read_response(&mut self) -> anyhow::Result<Response> {
        loop {
            if let Some(r) = parse_response(&mut self.buf)? {
                return Ok(r);
            }
            self.fill().await?;
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    body: Vec<u8>,
    close: bool,
}

/// Parse one complete response from the front of `buf` and consume it; `Ok(None)` while
/// incomplete. Supports `Content-Length` and chunked bodies; everything bounded.
fn parse_response(buf: &mut BytesMut) -> anyhow::Result<Option<Response>> {
    let Some(head_end) = find(&buf[..buf.len().min(MAX_HEAD + 4)], b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            bail!("response head larger than {MAX_HEAD} bytes");
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut close = status_line.starts_with("HTTP/1.0");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("bad header line {line:?}");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| anyhow!("bad Content-Length {value:?}"))?;
            if n > MAX_BODY {
                bail!("response body of {n} bytes (at most {MAX_BODY})");
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let body_start = head_end + 4;
    if chunked {
        let mut pos = body_start;
        let mut body = Vec::new();
        loop {
            let rest = &buf[pos..];
            let Some(eol) = find(&rest[..rest.len().min(64)], b"\r\n") else {
                if rest.len() > 64 {
                    bail!("bad chunk size line");
                }
                return Ok(None);
            };
            let size_text = std::str::from_utf8(&rest[..eol])
                .ok()
                .map(|s| s.split(';').next().unwrap_or_default().trim())
                .ok_or_else(|| anyhow!("bad chunk size line"))?;
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| anyhow!("bad chunk size {size_text:?}"))?;
            if body.len() + size > MAX_BODY {
                bail!("chunked body larger than {MAX_BODY} bytes");
            }
            let data = pos + eol + 2;
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                let rest = &buf[data..];
                let end = if rest.starts_with(b"\r\n") {
                    Some(2)
                } else {
                    find(rest, b"\r\n\r\n").map(|i| i + 4)
                };
                let Some(end) = end else {
                    if rest.len() > MAX_HEAD {
                        bail!("chunked trailers too large");
                    }
                    return Ok(None);
                };
                buf.advance(data + end);
                return Ok(Some(Response {
                    status,
                    body,
                    close,
                }));
            }
            if buf.len() < data + size + 2 {
                return Ok(None);
            }
            if &buf[data + size..data + size + 2] != b"\r\n" {
                bail!("chunk not followed by CRLF");
            }
            body.extend_from_slice(&buf[data..data + size]);
            pos = data + size + 2;
        }
    }
    let Some(length) = length else {
        if status == 204 || status == 304 || (100..200).contains(&status) {
            buf.advance(body_start);
            return Ok(Some(Response {
                status,
                body: Vec::new(),
                close,
            }));
        }
        bail!("response without Content-Length or chunked body");
    };
    if buf.len() < body_start + length {
        return Ok(None);
    }
    let body = buf[body_start..body_start + length].to_vec();
    buf.advance(body_start + length);
    Ok(Some(Response {
        status,
        body,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked_responses() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"header\":1}HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n4;x=y\r\n abc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"[..],
        );
        let r = parse_response(&mut buf).unwrap().unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.close),
            (200, &b"{\"header\":1}"[..], false)
        );
        let r = parse_response(&mut buf).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (503, &b"hello abc"[..]));
        assert!(parse_response(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"cde");
        assert_eq!(parse_response(&mut buf).unwrap().unwrap().body, b"abcde");
        assert!(buf.is_empty());
        // Incomplete chunked body waits.
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"[..]);
        assert!(parse_response(&mut buf).unwrap().is_none());
        // Bad input is an error, not a panic.
        for bad in [
            &b"HTTP/1.1 2x0 OK\r\n\r\n"[..],
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                parse_response(&mut buf).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut big = BytesMut::from(&vec![b'x'; MAX_HEAD + 10][..]);
        assert!(parse_response(&mut big).is_err());
    }

    #[test]
    fn endpoints_and_writers() {
        assert_eq!(
            parse_endpoints("http://127.0.0.1:2379, 127.0.0.1:22379/")
                .unwrap()
                .len(),
            2
        );
        assert!(parse_endpoints("https://127.0.0.1:2379").is_err());
        assert!(parse_endpoints("http://localhost:2379").is_err());
        assert!(parse_endpoints("").is_err());
        assert_eq!(parse_writers("1,16,256").unwrap(), vec![1, 16, 256]);
        assert!(parse_writers("0").is_err());
        assert!(parse_writers("x").is_err());
    }

    #[test]
    fn gaps() {
        let g = GapTracker::default();
        let (mut a, mut b) = (0, 0);
        g.success(100, &mut a);
        g.success(150, &mut b);
        g.success(2_000, &mut a);
        g.success(2_100, &mut b);
        g.writer_done(3_000, a);
        let (global, writer) = g.finish(3_000);
        assert_eq!(global, 1.85);
        assert_eq!(writer, 1.95);
    }
}
