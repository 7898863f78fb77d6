//! The router's own HTTP/1 path (`proxy::direct`), over real sockets on 127.0.0.1: dyno
//! connections kept alive and reused, a kept-alive connection the dyno closed replaced without
//! the client noticing, chunked / close-delimited / HEAD responses relayed whole, pipelined
//! requests answered in order, and requests it leaves to pingora served on the same client
//! connection in between.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::*;

/// A keep-alive dyno speaking raw HTTP/1.1, answering by path:
/// - `/chunked`: a chunked body with a trailer;
/// - `/close`: a body delimited by closing the connection;
/// - `/quiet-close`: a Content-Length body, then the connection closes 50 ms later without a
///   `Connection: close` (a dyno's idle timeout, as the router sees it);
/// - anything else: `path=<path>` with a Content-Length, request body (if any) read first.
struct KeepAliveDyno {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KeepAliveDyno {
    fn start() -> KeepAliveDyno {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, r, st) = (accepted.clone(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most 60 s of polling.
            for _ in 0..6000 {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                match l.accept() {
                    Ok((s, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        let r = r.clone();
                        std::thread::spawn(move || serve(s, &r));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        KeepAliveDyno {
            addr,
            accepted,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for KeepAliveDyno {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(s: TcpStream, requests: &AtomicUsize) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
        }
        let body = if chunked {
            match read_chunked(&mut r) {
                Some(raw) => decode_chunked(&raw),
                None => return,
            }
        } else {
            let mut body = vec![0u8; length];
            if r.read_exact(&mut body).is_err() {
                return;
            }
            body
        };
        requests.fetch_add(1, Ordering::Relaxed);
        let answer = match path.as_str() {
            "/chunked" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                6\r\nhello \r\n5;ext=1\r\nworld\r\n0\r\nx-trailer: 1\r\n\r\n"
                .to_owned(),
            "/close" => {
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end".to_owned()
            }
            p => {
                let text = format!("path={p} body={}", body.len());
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                )
            }
        };
        if w.write_all(answer.as_bytes()).is_err() {
            return;
        }
        match path.as_str() {
            "/close" => return,
            "/quiet-close" => {
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
            _ => {}
        }
    }
}

/// A chunked body as it came (sizes, data, trailer); `None` when the peer went away.
fn read_chunked(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        raw.extend_from_slice(line.as_bytes());
        let size = line.split([';', '\r']).next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        if size == 0 {
            loop {
                let mut t = String::new();
                if r.read_line(&mut t).ok()? == 0 {
                    return None;
                }
                raw.extend_from_slice(t.as_bytes());
                if t == "\r\n" {
                    return Some(raw);
                }
            }
        }
        let mut data = vec![0u8; size + 2];
        r.read_exact(&mut data).ok()?;
        raw.extend_from_slice(&data);
    }
}

/// The data of a well-formed chunked body.
fn decode_chunked(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let line = std::str::from_utf8(&raw[..eol]).unwrap();
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

/// Read one response off a kept-alive client connection: (status line, headers lowercased,
/// body), the body framed by Content-Length, chunked (returned raw) or the close.
fn response(r: &mut BufReader<TcpStream>, head_only: bool) -> (String, String, Vec<u8>) {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut headers = String::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
        headers.push_str(&h.to_ascii_lowercase());
    }
    let mut body = Vec::new();
    if head_only {
        return (status, headers, body);
    }
    let length = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap());
    if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body).unwrap();
    } else if headers.contains("transfer-encoding: chunked") {
        body = read_chunked(r).expect("a whole chunked body");
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    (status, headers, body)
}

fn client(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let r = BufReader::new(c.try_clone().unwrap());
    (c, r)
}

fn setup(dyno: &KeepAliveDyno) -> (wharf_router::Handle, String, Collect) {
    let pki = Pki::new();
    let mut s = base(&pki);
    let host = format!("{}.{DOMAIN}", add_app(&mut s, "api", "back", &[dyno.addr]));
    let sink = Collect::default();
    let r = start(&s, &sink);
    (r, host, sink)
}

#[test]
fn dyno_connections_are_kept_alive_and_reused() {
    let dyno = KeepAliveDyno::start();
    let (r, host, _sink) = setup(&dyno);
    let addr = r.addrs().internal.unwrap();

    let (mut c, mut rd) = client(addr);
    for i in 0..30 {
        write!(c, "GET /n/{i} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        let (status, headers, body) = response(&mut rd, false);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("path=/n/{i} body=0")
        );
        assert!(headers.contains("via: 1.1 wharf"), "{headers}");
        assert!(!headers.contains("connection: close"), "{headers}");
    }
    // A client connection stays on one worker thread, whose pool holds the dyno connection.
    assert_eq!(dyno.accepted(), 1, "30 requests over one dyno connection");
    assert_eq!(metric(&r, "wharf_router_direct_requests_total "), 30.0);

    // New client connections, each closed after one request: still pooled dyno connections
    // (one per worker thread at most).
    for i in 0..20 {
        let (mut c, mut rd) = client(addr);
        write!(
            c,
            "GET /c/{i} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let (status, headers, _) = response(&mut rd, false);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(headers.contains("connection: close"), "{headers}");
        let mut rest = Vec::new();
        assert_eq!(
            rd.read_to_end(&mut rest).unwrap(),
            0,
            "closed after the response"
        );
    }
    assert!(dyno.accepted() <= 3, "{} dyno connections", dyno.accepted());
    drop((c, rd));
    assert_nothing_leaks(&r);
}

#[test]
fn a_kept_alive_connection_the_dyno_closed_is_replaced_unseen() {
    let dyno = KeepAliveDyno::start();
    let (r, host, sink) = setup(&dyno);
    let addr = r.addrs().internal.unwrap();
    let (mut c, mut rd) = client(addr);
    for i in 0..10 {
        // The dyno closes this connection 50 ms after answering, without saying so.
        write!(c, "GET /quiet-close HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        let (status, _, _) = response(&mut rd, false);
        assert!(status.starts_with("HTTP/1.1 200"), "round {i}: {status}");
        std::thread::sleep(Duration::from_millis(150));
        // The pooled connection is closed by now: the router finds out and uses a new one.
        write!(c, "GET /after/{i} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        let (status, _, body) = response(&mut rd, false);
        assert!(status.starts_with("HTTP/1.1 200"), "round {i}: {status}");
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("path=/after/{i} body=0")
        );
    }
    assert!(
        !sink.lines().iter().any(|l| l.line.contains("at=error")),
        "no request failed"
    );
    assert_eq!(dyno.requests.load(Ordering::Relaxed), 20);
    drop((c, rd));
    assert_nothing_leaks(&r);
}

#[test]
fn chunked_close_delimited_and_head_responses_are_relayed_whole() {
    let dyno = KeepAliveDyno::start();
    let (r, host, sink) = setup(&dyno);
    let addr = r.addrs().internal.unwrap();
    let (mut c, mut rd) = client(addr);

    write!(c, "GET /chunked HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let (status, headers, body) = response(&mut rd, false);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(headers.contains("transfer-encoding: chunked"), "{headers}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "6\r\nhello \r\n5;ext=1\r\nworld\r\n0\r\nx-trailer: 1\r\n\r\n"
    );

    // HEAD: the head only, and the connection goes on.
    write!(c, "HEAD /h HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let (status, headers, _) = response(&mut rd, true);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(headers.contains("content-length: 14"), "{headers}");
    write!(c, "GET /next HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let (_, _, body) = response(&mut rd, false);
    assert_eq!(String::from_utf8_lossy(&body), "path=/next body=0");

    // Close-delimited: relayed to the dyno's close, then the client connection closes too.
    write!(c, "GET /close HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let (status, headers, body) = response(&mut rd, false);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(headers.contains("connection: close"), "{headers}");
    assert_eq!(String::from_utf8_lossy(&body), "until the end");

    // curl agrees on every framing (its header dump, `-D -`, prints the trailer after the body).
    let pki = Pki::new();
    for (path, want) in [
        ("/chunked", "hello worldx-trailer: 1\r\n"),
        ("/close", "until the end"),
        ("/x", "path=/x body=0"),
    ] {
        let g = curl(&pki, addr, "http", &host, path, &[]);
        assert_eq!((g.status, g.body.as_str()), (200, want), "{path}");
    }
    let line = sink.wait_for("path=\"/chunked\"");
    assert!(line.line.starts_with("at=info"), "{}", line.line);
    drop((c, rd));
    assert_nothing_leaks(&r);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let dyno = KeepAliveDyno::start();
    let (r, host, _sink) = setup(&dyno);
    let addr = r.addrs().internal.unwrap();
    let (mut c, mut rd) = client(addr);
    let mut batch = String::new();
    for p in ["/a", "/b", "/c", "/d"] {
        batch.push_str(&format!("GET {p} HTTP/1.1\r\nHost: {host}\r\n\r\n"));
    }
    c.write_all(batch.as_bytes()).unwrap();
    for p in ["/a", "/b", "/c", "/d"] {
        let (status, _, body) = response(&mut rd, false);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(String::from_utf8_lossy(&body), format!("path={p} body=0"));
    }
    drop((c, rd));
    assert_nothing_leaks(&r);
}

#[test]
fn requests_left_to_pingora_are_served_between_direct_ones() {
    let dyno = KeepAliveDyno::start();
    let (r, host, _sink) = setup(&dyno);
    let addr = r.addrs().internal.unwrap();
    let (mut c, mut rd) = client(addr);
    let exchanges: [(String, &str); 5] = [
        (
            format!("GET /1 HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            "path=/1 body=0",
        ),
        // A body: pingora's path.
        (
            format!("POST /2 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello"),
            "path=/2 body=5",
        ),
        (
            format!("GET /3 HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            "path=/3 body=0",
        ),
        // A chunked request body: pingora's path, the dyno gets it with a length or chunked.
        (
            format!(
                "PUT /4 HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            ),
            "path=/4 body=3",
        ),
        (
            format!("DELETE /5 HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            "path=/5 body=0",
        ),
    ];
    for (request, want) in &exchanges {
        c.write_all(request.as_bytes()).unwrap();
        let (status, _, body) = response(&mut rd, false);
        assert!(status.starts_with("HTTP/1.1 200"), "{request}: {status}");
        assert_eq!(String::from_utf8_lossy(&body), *want, "{request}");
    }
    // The three without a body took the direct path, the two with one pingora's.
    assert_eq!(metric(&r, "wharf_router_direct_requests_total "), 3.0);
    drop((c, rd));
    assert_nothing_leaks(&r);
}
