//! The operator commands that talk to a coordinator (`site`, `token`, `release publish|list|
//! show`, `artifact upload`, `root publish`, `rollout`, `audit`) and the HTTPS client they
//! share.
//!
//! The client trusts only the fleet CA given with `--ca` (pinned; the system roots are never
//! used) and sends the operator token as a bearer token. Where the coordinator, token and CA
//! come from: flags, then `FLEETWAVE_URL` / `FLEETWAVE_TOKEN` / `FLEETWAVE_CA`, then the
//! profile file `~/.config/fleetwave/cli.toml` (or `FLEETWAVE_PROFILE`). A refusal by the
//! server is one line with its status, code and message ([`ServerRefused`], exit code 1);
//! anything else (no answer, bad TLS, unreadable file) is exit code 2. This module never
//! prints a token except the one the server just created for the operator.

pub mod bundles;
pub mod channels;
pub mod export;
pub mod freezes;
pub mod output;
pub mod releases;
pub mod rollouts;
pub mod site_import;
pub mod sites;
pub mod webhooks;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use fleetwave_shared::protocol::ErrorBody;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The server answered with an error status: exit code 1, one line on stderr.
#[derive(Debug, thiserror::Error)]
#[error("{method} {path}: {status} {code}: {message}")]
pub struct ServerRefused {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// Where the coordinator is and how to talk to it; shared by every online command.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Coordinator base URL, e.g. https://fleet.example.com:8443.
    #[arg(long, env = "FLEETWAVE_URL", value_name = "URL")]
    pub url: Option<String>,
    /// Operator token (fwo_...). Prefer the environment or the profile to the command line.
    #[arg(
        long,
        env = "FLEETWAVE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// PEM file with the fleet CA that signed the coordinator's certificate (pinned).
    #[arg(long, env = "FLEETWAVE_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `~/.config/fleetwave/cli.toml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    url: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
}

/// The profile file: `FLEETWAVE_PROFILE`, else `$XDG_CONFIG_HOME/fleetwave/cli.toml`,
/// else `~/.config/fleetwave/cli.toml`.
pub fn profile_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLEETWAVE_PROFILE") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("fleetwave").join("cli.toml"))
}

fn load_profile() -> Result<(Profile, Option<PathBuf>)> {
    let Some(path) = profile_path() else {
        return Ok((Profile::default(), None));
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Profile::default(), None));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let profile: Profile = toml::from_str(&text)
        .with_context(|| format!("profile {} is not valid", path.display()))?;
    Ok((profile, Some(path)))
}

/// An operator's HTTPS connection to one coordinator.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Client {
    /// Resolves flags, environment and profile into a client.
    pub fn connect(args: &ConnectArgs) -> Result<Client> {
        let (profile, profile_file) = load_profile()?;
        let relative_to_profile = |p: PathBuf| match (&profile_file, p.is_relative()) {
            (Some(f), true) => f.parent().map(|d| d.join(&p)).unwrap_or(p),
            _ => p,
        };
        let url = args.url.clone().or(profile.url).context(
            "no coordinator URL: give --url, set FLEETWAVE_URL, or put url = \"https://...\" in ~/.config/fleetwave/cli.toml",
        )?;
        let token = match (args.token.clone(), profile.token, profile.token_file) {
            (Some(t), _, _) | (None, Some(t), _) => t,
            (None, None, Some(file)) => {
                let file = relative_to_profile(file);
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read token_file {}", file.display()))?
            }
            (None, None, None) => bail!(
                "no operator token: give --token, set FLEETWAVE_TOKEN, or put token_file = \"...\" in ~/.config/fleetwave/cli.toml"
            ),
        };
        let ca = args.ca.clone().or(profile.ca.map(relative_to_profile));
        Client::new(&url, &token, ca.as_deref())
    }

    /// A client for `base_url` trusting only the CA in `ca_pem` (required for https).
    pub fn new(base_url: &str, token: &str, ca_pem: Option<&Path>) -> Result<Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = base_url.trim_end_matches('/').to_string();
        let https = base.starts_with("https://");
        if !https && !base.starts_with("http://") {
            bail!(
                "coordinator URL {base:?} must start with https:// (or http:// for a plain-HTTP development server)"
            );
        }
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("fleetwave-cli/", env!("CARGO_PKG_VERSION")));
        if https {
            let ca = ca_pem.context(
                "no fleet CA: give --ca FILE (the CA that signed the coordinator's certificate, e.g. tls/ca.pem from `fleetwave-coordinator init`) or set FLEETWAVE_CA",
            )?;
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read the fleet CA {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            builder = builder
                .tls_backend_rustls()
                .tls_certs_only([cert])
                .https_only(true);
        }
        let http = builder.build().context("cannot build the HTTPS client")?;
        Ok(Client {
            base,
            token: token.trim().to_string(),
            http,
        })
    }

    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        build: impl FnOnce(reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response> {
        let url = format!("{}{path}", self.base);
        let request = build(
            self.http
                .request(method.clone(), &url)
                .bearer_auth(&self.token),
        );
        let response = request
            .send()
            .map_err(|e| anyhow::anyhow!("{method} {url}: {}", error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => (body.error.code, body.error.message),
            Err(_) => (
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_lowercase()
                    .replace(' ', "_"),
                text.lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(300)
                    .collect(),
            ),
        };
        Err(ServerRefused {
            method: method.to_string(),
            path: path.to_string(),
            status: status.as_u16(),
            code,
            message,
        }
        .into())
    }

    fn decode<T: DeserializeOwned>(
        method: &str,
        path: &str,
        response: reqwest::blocking::Response,
    ) -> Result<T> {
        let bytes = response
            .bytes()
            .with_context(|| format!("{method} {path}: reading the answer"))?;
        serde_json::from_slice(&bytes).with_context(|| {
            format!("{method} {path}: the coordinator's answer is not what this CLI expects (versions differ?)")
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.send(reqwest::Method::GET, path, |b| b)?;
        Client::decode("GET", path, r)
    }

    /// Every item of a paged list (`?after=ID&limit=N`, answered with `next_after`):
    /// `query` is the list's filters, `split` takes a page apart into its items and the
    /// next page's start.
    pub fn get_all<P: DeserializeOwned, T>(
        &self,
        path: &str,
        query: &[String],
        split: impl Fn(P) -> (Vec<T>, Option<String>),
    ) -> Result<Vec<T>> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut q = query.to_vec();
            q.push("limit=1000".to_string());
            if let Some(a) = &after {
                q.push(format!("after={}", encode(a)));
            }
            let (page, next) = split(self.get(&format!("{path}?{}", q.join("&")))?);
            items.extend(page);
            match next {
                Some(next) => after = Some(next),
                None => return Ok(items),
            }
        }
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let r = self.send(reqwest::Method::POST, path, |b| b.json(body))?;
        Client::decode("POST", path, r)
    }

    /// A POST whose answer has no body (204).
    pub fn post_empty<B: Serialize>(&self, path: &str, body: Option<&B>) -> Result<()> {
        self.send(reqwest::Method::POST, path, |b| match body {
            Some(body) => b.json(body),
            None => b,
        })?;
        Ok(())
    }

    /// A POST whose answer (any size) is streamed to `out`, written to `out.partial` first
    /// and renamed when complete. Returns the bytes written and the answer's headers.
    pub fn post_to_file<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        out: &Path,
    ) -> Result<(u64, reqwest::header::HeaderMap)> {
        let mut r = self.send(reqwest::Method::POST, path, |b| {
            b.json(body).timeout(Duration::from_secs(6 * 3600))
        })?;
        let headers = r.headers().clone();
        let expected = r.content_length();
        let partial = out.with_extension("partial");
        let mut file = std::fs::File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let written = std::io::copy(&mut r, &mut file)
            .with_context(|| format!("POST {path}: writing {}", partial.display()));
        let written = match written.and_then(|n| {
            file.sync_all()
                .with_context(|| format!("cannot write {}", partial.display()))?;
            Ok(n)
        }) {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        if let Some(expected) = expected
            && expected != written
        {
            let _ = std::fs::remove_file(&partial);
            bail!("POST {path}: the answer ended after {written} of {expected} bytes");
        }
        std::fs::rename(&partial, out)
            .with_context(|| format!("cannot rename {} to {}", partial.display(), out.display()))?;
        Ok((written, headers))
    }

    /// A DELETE whose answer has no body (204).
    pub fn delete(&self, path: &str) -> Result<()> {
        self.send(reqwest::Method::DELETE, path, |b| b)?;
        Ok(())
    }

    /// Streams `file` to `PUT path` with its length.
    pub fn put_file<T: DeserializeOwned>(&self, path: &str, file: &Path) -> Result<T> {
        let f =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("cannot read {}", file.display()))?
            .len();
        let r = self.send(reqwest::Method::PUT, path, |b| {
            b.header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .timeout(Duration::from_secs(3600))
                .body(reqwest::blocking::Body::sized(f, len))
        })?;
        Client::decode("PUT", path, r)
    }
}

/// `error: cause: cause` on one line (reqwest hides the useful part in sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Percent-encodes one path segment or query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
