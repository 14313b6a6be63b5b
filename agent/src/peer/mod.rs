//! The LAN peer cache: boxes of one site share the verified artifacts they hold, so a store
//! downloads each artifact over its uplink about once.
//!
//! Two halves, both on only with `[peers] enabled = true`:
//! - [`server`]: a small read-only HTTP/1.1 server that answers
//!   `GET /v1/peer/artifacts/{sha256}` with a verified staged artifact (and `Range`), or
//!   says that this box is downloading it itself.
//! - [`Peers::fetch`]: asks each peer in turn before the coordinator. Whatever a peer sends
//!   goes through the download's own [`receive`](crate::executor::download) and the same
//!   length and SHA-256 check; a peer that sends wrong, too many or too slow bytes, or
//!   answers anything unexpected, is not asked again for that artifact, and the bytes it
//!   sent are cut off the `.part` file again.
//!
//! Not all downloading at once: a box about to download from the coordinator first
//! *claims* the artifact with a random number and asks its peers again; a peer that is
//! downloading it already answers 503 `fetching` (wait, then take it from that peer), and
//! between two claims the lower number wins ([`decide`], pure). Waiting is bounded by
//! `peers.wait_secs`, after which the box downloads itself whatever its peers say.
//!
//! This module must never serve anything but a verified staged artifact, never keep a
//! byte a peer sent that did not verify, and never send the coordinator's token to a peer.

pub mod server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetwave_shared::Artifact;

use crate::config::PeersConfig;
use crate::executor::ExecError;
use crate::executor::download::{self, Transfer};

/// The one path a peer serves, followed by 64 lowercase hex characters.
pub const ARTIFACT_PATH: &str = "/v1/peer/artifacts/";
/// Header of a 503 that says what the answering box is doing about the artifact:
/// `fetching` or `claiming <n>`.
pub const ACTIVITY_HEADER: &str = "fleetwave-peer";
/// Pause before asking again while claims are being settled.
const SETTLE: Duration = Duration::from_millis(500);
/// Bounds on a peer's `Retry-After` while it downloads.
const RETRY_AFTER_MIN: Duration = Duration::from_secs(1);
const RETRY_AFTER_MAX: Duration = Duration::from_secs(10);

/// What this box is doing about an artifact it does not hold yet, as its peers are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// About to download it from the coordinator, unless a peer with a lower number is too.
    Claiming(u64),
    /// Downloading it from the coordinator (or mirror).
    Fetching,
}

impl Activity {
    /// The [`ACTIVITY_HEADER`] value.
    pub fn header_value(self) -> String {
        match self {
            Activity::Claiming(n) => format!("claiming {n}"),
            Activity::Fetching => "fetching".into(),
        }
    }

    /// Reads an [`ACTIVITY_HEADER`] value.
    pub fn parse(value: &str) -> Option<Activity> {
        match value.trim() {
            "fetching" => Some(Activity::Fetching),
            v => v
                .strip_prefix("claiming ")
                .and_then(|n| n.trim().parse().ok())
                .map(Activity::Claiming),
        }
    }
}

/// What this box is doing per artifact (SHA-256), shared by the fetcher and the server.
#[derive(Debug, Clone, Default)]
pub struct Board {
    entries: Arc<Mutex<HashMap<String, (u64, Activity)>>>,
    tokens: Arc<AtomicU64>,
}

impl Board {
    /// What this box is doing about `sha256`, if anything.
    pub fn activity(&self, sha256: &str) -> Option<Activity> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(sha256).map(|(_, a)| *a)
    }

    /// Announces `activity` for `sha256` until the returned [`Claim`] is dropped.
    pub fn announce(&self, sha256: &str, activity: Activity) -> Claim {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(sha256.to_string(), (token, activity));
        Claim {
            board: self.clone(),
            sha256: sha256.to_string(),
            token,
        }
    }
}

/// An announced [`Activity`]; dropping it withdraws the announcement.
#[derive(Debug)]
pub struct Claim {
    board: Board,
    sha256: String,
    token: u64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut entries = self.board.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries
            .get(&self.sha256)
            .is_some_and(|(t, _)| *t == self.token)
        {
            entries.remove(&self.sha256);
        }
    }
}

/// What a peer said about an artifact it does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// It is downloading it; ask again after this long.
    Fetching { retry_after: Duration },
    /// It claimed it with this number.
    Claiming(u64),
}

/// What to do next while no peer has served the artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Claim it (with a new random number) and ask the peers again at once.
    Claim,
    /// Ask again after `after`; give up an own claim unless `keep_claim`.
    Wait { after: Duration, keep_claim: bool },
    /// Download it from the coordinator (announcing `fetching`).
    Download,
}

/// The next step, given this box's own claim (if any), what the peers said in the round
/// just done, and whether `peers.wait_secs` has run out. Pure.
///
/// A peer that is downloading wins (wait for it). Between claims, the lowest number wins;
/// a box that holds the lowest claim but heard higher ones asks once more, since those
/// either give way to it or had not yet seen its claim and are downloading already.
pub fn decide(mine: Option<u64>, heard: &[Heard], patience_left: bool) -> Decision {
    if !patience_left {
        return Decision::Download;
    }
    let fetching = heard
        .iter()
        .filter_map(|h| match h {
            Heard::Fetching { retry_after } => Some(*retry_after),
            Heard::Claiming(_) => None,
        })
        .min();
    if let Some(after) = fetching {
        return Decision::Wait {
            after: after.clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX),
            keep_claim: false,
        };
    }
    let lowest = heard
        .iter()
        .filter_map(|h| match h {
            Heard::Claiming(n) => Some(*n),
            Heard::Fetching { .. } => None,
        })
        .min();
    match (mine, lowest) {
        (None, None) => Decision::Claim,
        (Some(_), None) => Decision::Download,
        (None, Some(_)) => Decision::Wait {
            after: SETTLE,
            keep_claim: false,
        },
        (Some(m), Some(l)) => Decision::Wait {
            after: SETTLE,
            keep_claim: m < l,
        },
    }
}

/// Where an artifact comes from after the peers were asked.
#[derive(Debug)]
pub enum PeerOutcome {
    /// A peer served it and it verified: the staged path.
    Staged(PathBuf),
    /// Download it from the coordinator; while the claim is held, peers are told
    /// `fetching` (None: nothing announced).
    Download(Option<Claim>),
}

/// One peer's answer to one request.
enum Answer {
    Staged(PathBuf),
    Busy(Heard),
    /// It does not hold the artifact, is unreachable, or is over its connection limit.
    Absent,
    /// It misbehaved: not asked again for this artifact.
    Bad(String),
}

/// The site's other boxes, and this box's own [`Board`].
#[derive(Debug)]
pub struct Peers {
    addresses: Vec<String>,
    client: reqwest::Client,
    timeout: Duration,
    min_bytes_per_sec: u64,
    wait: Duration,
    board: Board,
}

impl Peers {
    /// Peers as configured (the config is validated); `board` is shared with the server.
    pub fn new(config: &PeersConfig, board: Board) -> Result<Peers, String> {
        let timeout = Duration::from_secs(config.timeout_secs);
        // Plain HTTP on the LAN: integrity comes from the signed SHA-256, not the link.
        // (reqwest wants a TLS provider even for a client that only speaks HTTP.)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot set up the peer client: {e}"))?;
        Ok(Peers {
            addresses: config.addresses.clone(),
            client,
            timeout,
            min_bytes_per_sec: config.min_bytes_per_sec,
            wait: Duration::from_secs(config.wait_secs),
            board,
        })
    }

    /// This box's own announcements (what its server tells peers).
    pub fn board(&self) -> &Board {
        &self.board
    }

    /// Tries to get `artifact` from a peer (into the staging directory, verified), waiting
    /// for a peer that is downloading it, at most `peers.wait_secs`. Never fails: whatever
    /// goes wrong with peers ends in [`PeerOutcome::Download`].
    pub async fn fetch(&self, artifact: &Artifact, staging_dir: &Path) -> PeerOutcome {
        let part = download::part_path(staging_dir, &artifact.sha256);
        if download::part_len(&part).await >= artifact.length {
            return PeerOutcome::Download(None); // complete already: the download verifies it
        }
        let give_up_at = tokio::time::Instant::now() + self.wait;
        let mut dropped = vec![false; self.addresses.len()];
        let mut claim: Option<(u64, Claim)> = None;
        loop {
            let mut heard = Vec::new();
            for (i, address) in self.addresses.iter().enumerate() {
                if dropped[i] {
                    continue;
                }
                match self.ask(address, artifact, staging_dir).await {
                    Answer::Staged(path) => {
                        tracing::info!("artifact {} from peer {address}, verified", artifact.name);
                        return PeerOutcome::Staged(path);
                    }
                    Answer::Busy(h) => heard.push(h),
                    Answer::Absent => {}
                    Answer::Bad(why) => {
                        tracing::warn!(
                            "peer {address} dropped for artifact {}: {why}",
                            artifact.name
                        );
                        dropped[i] = true;
                    }
                }
            }
            let now = tokio::time::Instant::now();
            let mine = claim.as_ref().map(|(n, _)| *n);
            match decide(mine, &heard, now < give_up_at) {
                Decision::Claim => {
                    let n = random_claim();
                    claim = Some((
                        n,
                        self.board.announce(&artifact.sha256, Activity::Claiming(n)),
                    ));
                }
                Decision::Download => {
                    // Announced before the claim is withdrawn: peers never see a gap.
                    let fetching = self.board.announce(&artifact.sha256, Activity::Fetching);
                    drop(claim);
                    return PeerOutcome::Download(Some(fetching));
                }
                Decision::Wait { after, keep_claim } => {
                    if !keep_claim {
                        claim = None;
                    }
                    let left = give_up_at.saturating_duration_since(now);
                    tokio::time::sleep(after.min(left)).await;
                }
            }
        }
    }

    /// One request to one peer, resuming the `.part` file with `Range`.
    async fn ask(&self, address: &str, artifact: &Artifact, staging_dir: &Path) -> Answer {
        let part = download::part_path(staging_dir, &artifact.sha256);
        let have = download::part_len(&part).await;
        let url = format!("http://{address}{ARTIFACT_PATH}{}", artifact.sha256);
        let mut req = self.client.get(&url);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        // Unreachable or not answering in time: as if it did not hold the artifact.
        let Ok(Ok(resp)) = tokio::time::timeout(self.timeout, req.send()).await else {
            return Answer::Absent;
        };
        let status = resp.status().as_u16();
        match status {
            404 => return Answer::Absent,
            503 => {
                let activity = resp
                    .headers()
                    .get(ACTIVITY_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(Activity::parse);
                return match activity {
                    Some(Activity::Fetching) => {
                        let retry_after = resp
                            .headers()
                            .get(reqwest::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map_or(RETRY_AFTER_MIN, Duration::from_secs);
                        Answer::Busy(Heard::Fetching { retry_after })
                    }
                    Some(Activity::Claiming(n)) => Answer::Busy(Heard::Claiming(n)),
                    None => Answer::Absent, // over its connection limit
                };
            }
            206 => {}
            200 if have == 0 => {}
            200 => return Answer::Bad(format!("answered 200 to a range from byte {have}")),
            _ => return Answer::Bad(format!("answered HTTP {status}")),
        }
        let remaining = artifact.length - have;
        let grace = self.timeout + Duration::from_secs(remaining / self.min_bytes_per_sec);
        let transfer = Transfer {
            url: &url,
            have,
            artifact,
            part: &part,
            stall: self.timeout,
            deadline: Some(tokio::time::Instant::now() + grace),
            max_bytes_per_sec: 0,
        };
        let received = download::receive(resp, &transfer).await;
        let verified = match received {
            Ok(()) => download::verify_file(&part, artifact).await,
            Err(e) => Err(e),
        };
        if let Err(e) = verified {
            // Never keep a peer's bytes that did not verify: back to what was there.
            if let Err(io) = cut_back(&part, have).await {
                return Answer::Bad(format!("{e}; and {io}"));
            }
            return Answer::Bad(e.to_string());
        }
        let done = download::staged_path(staging_dir, &artifact.sha256);
        match download::promote(&part, &done).await {
            Ok(path) => Answer::Staged(path),
            Err(e) => Answer::Bad(e.to_string()),
        }
    }
}

/// Cuts the `.part` file back to `len` bytes (removes it when `len` is 0), durably.
async fn cut_back(part: &Path, len: u64) -> Result<(), ExecError> {
    let path = part.to_path_buf();
    let done = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if len == 0 {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let file = std::fs::OpenOptions::new().write(true).open(&path)?;
        file.set_len(len)?;
        file.sync_all()
    })
    .await
    .map_err(std::io::Error::other);
    done.and_then(|r| r)
        .map_err(|e| ExecError::io("cutting back", part, e))
}

fn random_claim() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(2);

    #[test]
    fn nobody_busy_claims_then_downloads() {
        assert_eq!(decide(None, &[], true), Decision::Claim);
        assert_eq!(decide(Some(7), &[], true), Decision::Download);
    }

    #[test]
    fn a_peer_downloading_is_waited_for_and_a_claim_given_up() {
        let heard = [Heard::Claiming(1), Heard::Fetching { retry_after: S }];
        for mine in [None, Some(0), Some(9)] {
            assert_eq!(
                decide(mine, &heard, true),
                Decision::Wait {
                    after: S,
                    keep_claim: false
                }
            );
        }
        // A peer's Retry-After is bounded both ways.
        let long = [Heard::Fetching {
            retry_after: Duration::from_secs(3600),
        }];
        assert_eq!(
            decide(None, &long, true),
            Decision::Wait {
                after: RETRY_AFTER_MAX,
                keep_claim: false
            }
        );
    }

    #[test]
    fn the_lowest_claim_wins_and_ties_both_give_way() {
        let heard = [Heard::Claiming(5), Heard::Claiming(9)];
        assert_eq!(
            decide(Some(3), &heard, true),
            Decision::Wait {
                after: SETTLE,
                keep_claim: true
            }
        );
        for mine in [Some(5), Some(7), None] {
            assert_eq!(
                decide(mine, &heard, true),
                Decision::Wait {
                    after: SETTLE,
                    keep_claim: false
                }
            );
        }
    }

    #[test]
    fn patience_runs_out_into_a_download() {
        let heard = [Heard::Fetching { retry_after: S }, Heard::Claiming(0)];
        assert_eq!(decide(None, &heard, false), Decision::Download);
    }

    #[test]
    fn activity_header_round_trips_and_junk_is_none() {
        for a in [Activity::Fetching, Activity::Claiming(u64::MAX)] {
            assert_eq!(Activity::parse(&a.header_value()), Some(a));
        }
        for junk in ["", "claiming", "claiming -1", "fetching now", "downloading"] {
            assert_eq!(Activity::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn a_claim_withdraws_only_its_own_announcement() {
        let board = Board::default();
        let first = board.announce("ab", Activity::Claiming(1));
        let second = board.announce("ab", Activity::Fetching);
        drop(first);
        assert_eq!(board.activity("ab"), Some(Activity::Fetching));
        drop(second);
        assert_eq!(board.activity("ab"), None);
    }
}
