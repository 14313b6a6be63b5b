//! The operator's view of the coordinator, over its real HTTPS API, for scenarios to act
//! (enrollment tokens, rollouts) and to observe (sites, rollout timelines, decisions).
//!
//! TLS trusts only the fleet CA the coordinator created at `init`, exactly as operators and
//! agents do. Shapes are `fleetwave_shared::protocol::operator`. This module never reaches
//! into the coordinator's internals; facts no API exposes are read by [`crate::inspect`].

use std::path::Path;
use std::time::Duration;

use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::operator::{self as api, paths};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{HarnessError, Result};

/// An operator with a bearer token.
#[derive(Debug, Clone)]
pub struct Operator {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Operator {
    /// `base_url` such as `https://127.0.0.1:8443`; `ca_pem` the fleet CA certificate.
    pub fn new(base_url: &str, ca_pem: &Path, token: &str) -> Result<Operator> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = std::fs::read(ca_pem).map_err(|e| {
            HarnessError::io(format!("reading the fleet CA {}", ca_pem.display()), e)
        })?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            HarnessError::Fleet(format!(
                "{} is not a PEM certificate: {e}",
                ca_pem.display()
            ))
        })?;
        let http = reqwest::blocking::Client::builder()
            .tls_backend_rustls()
            .tls_certs_only([cert])
            .https_only(base_url.starts_with("https://"))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| HarnessError::Fleet(format!("building the operator HTTP client: {e}")))?;
        Ok(Operator {
            base: base_url.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            http,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        request: reqwest::blocking::RequestBuilder,
    ) -> Result<T> {
        let api_err = |status: u16, body: String| HarnessError::Api {
            method: method.to_string(),
            url: self.url(path),
            status,
            body,
        };
        let response = request
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| api_err(0, format!("{e:#}")))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .map_err(|e| api_err(status, e.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(api_err(status, body));
        }
        let body = if body.trim().is_empty() {
            "null".to_string()
        } else {
            body
        };
        serde_json::from_str(&body)
            .map_err(|e| api_err(status, format!("unexpected answer ({e}): {body}")))
    }

    /// `GET path` as JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send("GET", path, self.http.get(self.url(path)))
    }

    /// `POST path` with a JSON body.
    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send("POST", path, self.http.post(self.url(path)).json(body))
    }

    /// `PUT path` with raw bytes.
    pub fn put_bytes<T: DeserializeOwned>(&self, path: &str, bytes: Vec<u8>) -> Result<T> {
        self.send(
            "PUT",
            path,
            self.http
                .put(self.url(path))
                .header("content-type", "application/octet-stream")
                .body(bytes),
        )
    }

    /// The HTTP status of `GET path` without a token (e.g. `/healthz`), or the transport error.
    pub fn probe(&self, path: &str) -> Result<u16> {
        self.http
            .get(self.url(path))
            .send()
            .map(|r| r.status().as_u16())
            .map_err(|e| HarnessError::Api {
                method: "GET".into(),
                url: self.url(path),
                status: 0,
                body: format!("{e:#}"),
            })
    }

    /// `GET path` with the operator's token, whatever it answers: the status, the
    /// `Retry-After` header and the body (e.g. a standby's or an unready coordinator's 503).
    pub fn answer(&self, path: &str) -> Result<(u16, Option<String>, String)> {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| HarnessError::Api {
                method: "GET".into(),
                url: self.url(path),
                status: 0,
                body: format!("{e:#}"),
            })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok((status, retry_after, response.text().unwrap_or_default()))
    }

    /// A counter of the coordinator's `/metrics` (`fleetwave_<name>_total`, no labels).
    pub fn counter(&self, name: &str) -> Result<u64> {
        let path = "/metrics";
        let text = self
            .http
            .get(self.url(path))
            .send()
            .and_then(|r| r.text())
            .map_err(|e| HarnessError::Api {
                method: "GET".into(),
                url: self.url(path),
                status: 0,
                body: format!("{e:#}"),
            })?;
        let prefix = format!("fleetwave_{name}_total ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| HarnessError::Api {
                method: "GET".into(),
                url: self.url(path),
                status: 200,
                body: format!("no counter fleetwave_{name}_total"),
            })
    }

    // ----- typed helpers for the routes the scenarios use -----

    pub fn create_enrollment_token(
        &self,
        request: &api::CreateEnrollmentToken,
    ) -> Result<api::EnrollmentTokenCreated> {
        self.post(paths::ENROLLMENT_TOKENS, request)
    }

    /// Every site (follows pages).
    pub fn sites(&self) -> Result<Vec<api::SiteInfo>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                None => format!("{}?limit=1000", paths::SITES),
                Some(a) => format!("{}?limit=1000&after={a}", paths::SITES),
            };
            let page: api::SiteList = self.get(&path)?;
            all.extend(page.sites);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    pub fn site(&self, id: &str) -> Result<api::SiteInfo> {
        self.get(&format!("{}/{id}", paths::SITES))
    }

    pub fn rollout(&self, id: &str) -> Result<api::RolloutView> {
        self.get(&format!("{}/{id}", paths::ROLLOUTS))
    }

    /// Every site of a rollout, by site id (`GET /v1/rollouts/{id}/sites`, page by page):
    /// the rollout's view lists only the sites that need attention.
    pub fn rollout_sites(&self, id: &str) -> Result<Vec<api::RolloutSiteView>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                None => format!("{}/{id}/sites?limit=1000", paths::ROLLOUTS),
                Some(a) => format!("{}/{id}/sites?limit=1000&after={a}", paths::ROLLOUTS),
            };
            let page: api::RolloutSiteList = self.get(&path)?;
            all.extend(page.sites);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Uploads an artifact (`PUT /v1/artifacts/<sha256>`).
    pub fn upload_artifact(&self, bytes: Vec<u8>) -> Result<api::ArtifactInfo> {
        let sha = fleetwave_shared::sha256_hex(&bytes);
        self.put_bytes(&format!("/v1/artifacts/{sha}"), bytes)
    }

    /// Publishes a signed release envelope.
    pub fn publish_release(&self, envelope: &Envelope) -> Result<api::ReleaseInfo> {
        self.post(paths::RELEASES, envelope)
    }

    /// Publishes a root rotation (admin).
    pub fn publish_root(&self, envelope: &Envelope) -> Result<api::RootInfo> {
        self.post(paths::ROOTS, envelope)
    }

    /// Creates a rollout from plan TOML.
    pub fn create_rollout(&self, plan_toml: &str) -> Result<api::RolloutView> {
        self.post(
            paths::ROLLOUTS,
            &api::CreateRollout {
                plan: plan_toml.to_string(),
                format: api::PlanFormat::Toml,
            },
        )
    }

    /// `POST /v1/rollouts/<id>/<action>` with an empty JSON object (start, pause, resume,
    /// abort, rollback).
    pub fn rollout_action(&self, id: &str, action: &str) -> Result<api::RolloutView> {
        self.post(
            &format!("{}/{id}/{action}", paths::ROLLOUTS),
            &serde_json::json!({}),
        )
    }

    pub fn approve(&self, id: &str, wave: u32) -> Result<api::RolloutView> {
        self.post(
            &format!("{}/{id}/approve", paths::ROLLOUTS),
            &api::ApproveWave { wave },
        )
    }
}
