//! A webhook receiver for the end-to-end tests: plain HTTP/1.1 on loopback, verifying
//! every request's Standard Webhooks signature.
//!
//! ```text
//! fleetwave-webhook-receiver --listen 127.0.0.1:PORT --dir DIR --secret whsec_... [--secret ...]
//! ```
//!
//! - A request whose `webhook-signature` verifies with one of the secrets is appended to
//!   `DIR/events.jsonl` as `{"path", "webhook_id", "timestamp", "body"}`; any other is
//!   answered 401 and not logged.
//! - While the file `DIR/hold` exists, a verified request is held without an answer: the
//!   receiver first writes `DIR/received-<webhook-id>` (the test's pause point: the
//!   request is in hand), then answers once `DIR/hold` is removed, and writes
//!   `DIR/answered-<webhook-id>`.
//! - By path: `/flaky` answers 500 to the first request of each webhook-id and 200 after;
//!   `/redirect` answers 302 to `/redirected`; `/huge` answers 200 with 16 MiB; anything
//!   else 200.
//! - `DIR/ready` is written once it listens.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

struct Receiver {
    dir: PathBuf,
    keys: Vec<Vec<u8>>,
    log: Mutex<()>,
    flaky_seen: Mutex<HashSet<String>>,
}

fn main() {
    let mut listen = None;
    let mut dir = None;
    let mut keys = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--listen" => listen = Some(value()),
            "--dir" => dir = Some(PathBuf::from(value())),
            "--secret" => {
                let s = value();
                let b64 = s
                    .strip_prefix("whsec_")
                    .unwrap_or_else(|| fail("a secret starts with whsec_"));
                keys.push(
                    B64.decode(b64)
                        .unwrap_or_else(|e| fail(&format!("secret: {e}"))),
                );
            }
            other => fail(&format!("unknown argument {other}")),
        }
    }
    let listen = listen.unwrap_or_else(|| fail("--listen ADDR is required"));
    let dir = dir.unwrap_or_else(|| fail("--dir DIR is required"));
    if keys.is_empty() {
        fail("give at least one --secret");
    }
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| fail(&format!("{listen}: {e}")));
    std::fs::write(dir.join("ready"), listen.as_bytes())
        .unwrap_or_else(|e| fail(&format!("{}: {e}", dir.display())));
    let receiver = Arc::new(Receiver {
        dir,
        keys,
        log: Mutex::new(()),
        flaky_seen: Mutex::new(HashSet::new()),
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let r = receiver.clone();
        std::thread::spawn(move || {
            if let Err(e) = r.serve(stream) {
                eprintln!("connection: {e}");
            }
        });
    }
}

fn fail(message: &str) -> ! {
    eprintln!("fleetwave-webhook-receiver: {message}");
    std::process::exit(2)
}

struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }
}

fn read_request(stream: &TcpStream) -> std::io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(Some(Request {
        path,
        headers,
        body,
    }))
}

fn answer(mut stream: &TcpStream, status: &str, extra: &str, body: &[u8]) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()
}

impl Receiver {
    fn verifies(&self, id: &str, timestamp: &str, body: &[u8], signatures: &str) -> bool {
        self.keys.iter().any(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            let expected = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
            signatures.split(' ').any(|s| s == expected)
        })
    }

    fn marker(&self, name: &str) {
        let _ = std::fs::write(self.dir.join(name), b"");
    }

    fn serve(&self, stream: TcpStream) -> std::io::Result<()> {
        let Some(req) = read_request(&stream)? else {
            return Ok(());
        };
        let id = req.header("webhook-id").to_string();
        let timestamp = req.header("webhook-timestamp").to_string();
        if id.is_empty()
            || timestamp.is_empty()
            || !self.verifies(&id, &timestamp, &req.body, req.header("webhook-signature"))
        {
            return answer(&stream, "401 Unauthorized", "", b"bad signature");
        }
        {
            let _guard = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let line = serde_json::json!({
                "path": req.path,
                "webhook_id": id,
                "timestamp": timestamp,
                "body": String::from_utf8_lossy(&req.body),
            });
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("events.jsonl"))?;
            writeln!(f, "{line}")?;
            f.sync_all()?;
        }
        if hold_file(&self.dir).exists() {
            self.marker(&format!("received-{id}"));
            // Pacing while the test decides; no assertion depends on how long.
            while hold_file(&self.dir).exists() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let result = match req.path.as_str() {
            "/flaky" => {
                let first = self
                    .flaky_seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone());
                if first {
                    answer(&stream, "500 Internal Server Error", "", b"try again")
                } else {
                    answer(&stream, "200 OK", "", b"ok")
                }
            }
            "/redirect" => answer(&stream, "302 Found", "Location: /redirected\r\n", b""),
            "/huge" => answer(&stream, "200 OK", "", &vec![b'x'; 16 << 20]),
            _ => answer(&stream, "200 OK", "", b"ok"),
        };
        self.marker(&format!("answered-{id}"));
        result
    }
}

fn hold_file(dir: &Path) -> PathBuf {
    dir.join("hold")
}
