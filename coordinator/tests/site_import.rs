//! Importing sites (`POST /v1/sites/import`) against a real coordinator over TLS: sites
//! with device keys are active at once and open sessions with their key, sites without
//! get one-use tokens bound to them and their labels; a bad file is refused naming each
//! line and field, and nothing of it is stored; one audit entry per import; pre-registered
//! sites join an active rollout. And the store's chunk and undo on both backends (a real
//! SQLite file, a real PostgreSQL database).

mod backend;
mod common;

use backend::{Backend, TestDb};

use std::collections::BTreeMap;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use fleetwave_coordinator::store::{
    EnrollmentTokenRecord, ImportedSite, ImportedToken, StoreError,
};
use fleetwave_shared::keys;
use fleetwave_shared::protocol::{enroll_message, session_message};
use jiff::{SignedDuration, Timestamp};
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::{Agent, Harness};

fn device_key(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().as_bytes())
}

/// Opens a session for `site` with `key` (what a pre-registered box does first); returns
/// the session token.
async fn session(h: &Harness, site: &str, key: &SigningKey) -> (StatusCode, Value) {
    let at = h.clock.now();
    let nonce = hex::encode(rand_bytes());
    let sig = base64::engine::general_purpose::STANDARD
        .encode(key.sign(&session_message(site, at, &nonce)).to_bytes());
    h.post(
        "/v1/agent/session",
        "",
        json!({"site_id": site, "timestamp": at, "nonce": nonce, "signature": sig}),
    )
    .await
}

/// Enrolls `site` with `token` and a new device key.
async fn enroll(h: &Harness, site: &str, token: &str, key: &SigningKey) -> (StatusCode, Value) {
    let device = device_key(key);
    let proof = base64::engine::general_purpose::STANDARD
        .encode(key.sign(&enroll_message(site, token, &device)).to_bytes());
    h.post(
        "/v1/enroll",
        "",
        json!({"token": token, "site_id": site, "device_key": device,
               "agent_version": "0.1.0", "proof": proof}),
    )
    .await
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    b
}

async fn import(h: &Harness, token: &str, format: &str, text: &str) -> (StatusCode, Value) {
    h.post(
        "/v1/sites/import",
        token,
        json!({"format": format, "text": text, "expires_in_secs": 7200}),
    )
    .await
}

async fn audit_of(h: &Harness, action: &str) -> Vec<Value> {
    let (s, v) = h.get("/v1/audit?limit=1000", &h.admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

async fn site_ids(h: &Harness) -> Vec<String> {
    let (s, v) = h.get("/v1/sites?limit=1000", &h.admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

async fn enrollment_tokens(h: &Harness) -> Vec<Value> {
    let (s, v) = h.get("/v1/enrollment-tokens", &h.admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["tokens"].as_array().unwrap().clone()
}

#[tokio::test]
async fn keys_register_sites_and_the_others_get_tokens_bound_to_them() {
    let h = Harness::new().await;
    let alice = h.token("alice", "operator").await;
    let (k1, k2) = (keys::generate(), keys::generate());
    let file = format!(
        "site_id,label:region,label:tz,device_key\n\
         store-1,eu,Europe/Paris,{}\n\
         store-2,us,,{}\n\
         # boxes not imaged yet\n\
         store-3,eu,Europe/Berlin,\n\
         store-4,,,\n",
        device_key(&k1),
        device_key(&k2)
    );
    let before = h.clock.now();
    let (s, v) = import(&h, &alice, "csv", &file).await;
    let after = h.clock.now();
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["sites"], 4);
    assert_eq!(v["registered"], 2);
    let tokens: BTreeMap<String, String> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["site_id"].as_str().unwrap().to_string(),
                t["token"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        tokens.keys().collect::<Vec<_>>(),
        ["store-3", "store-4"],
        "{v}"
    );
    let expires: Timestamp = v["tokens_expire_at"].as_str().unwrap().parse().unwrap();
    let valid = SignedDuration::from_secs(7200);
    assert!(before + valid <= expires && expires <= after + valid, "{v}");

    // The pre-registered sites are active with their labels and keys,
    // and open sessions with their key: no token, no enrollment.
    let (s, site) = h.get("/v1/sites/store-1", &alice).await;
    assert_eq!(s, StatusCode::OK, "{site}");
    assert_eq!(site["state"], "active");
    assert_eq!(
        site["labels"],
        json!({"region": "eu", "tz": "Europe/Paris"})
    );
    assert_eq!(site["device_key"], device_key(&k1));
    let (_, site2) = h.get("/v1/sites/store-2", &alice).await;
    assert_eq!(site2["device_key"], device_key(&k2));
    assert_eq!(site2["labels"], json!({"region": "us"}));
    let (s, v) = session(&h, "store-2", &k2).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Another key is not the site's.
    let (s, _) = session(&h, "store-1", &k2).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Token sites do not exist until their box enrolls with its token, and get the file's
    // labels then.
    assert_eq!(site_ids(&h).await, ["store-1", "store-2"]);
    let mut bound: Vec<(String, Value)> = enrollment_tokens(&h)
        .await
        .iter()
        .map(|t| (t["site_id"].to_string(), t["uses_left"].clone()))
        .collect();
    bound.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        bound,
        [
            ("\"store-3\"".to_string(), json!(1)),
            ("\"store-4\"".to_string(), json!(1))
        ]
    );
    // Bound to its site: another site id cannot use it.
    let (s, v) = enroll(&h, "store-9", &tokens["store-3"], &keys::generate()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "token_site_mismatch");
    Agent::enroll_with(&h, "store-3", &tokens["store-3"]).await;
    let (_, site3) = h.get("/v1/sites/store-3", &alice).await;
    assert_eq!(
        site3["labels"],
        json!({"region": "eu", "tz": "Europe/Berlin"})
    );
    // One use.
    let (s, v) = enroll(&h, "store-3", &tokens["store-3"], &keys::generate()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");

    // One audit entry for the import, with its counts and no secret.
    let entries = audit_of(&h, "site.import").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let detail = entries[0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(
            "4 sites from a CSV file: 2 pre-registered with device keys, 2 enrollment tokens"
        ),
        "{detail}"
    );
    assert!(!detail.contains(&tokens["store-4"]), "{detail}");
    assert!(entries[0]["actor"].as_str().unwrap().contains("alice"));
    assert!(entries[0]["target"].as_str().unwrap().starts_with("imp-"));
}

#[tokio::test]
async fn a_bad_file_is_refused_line_by_line_and_nothing_is_stored() {
    let h = Harness::new().await;
    let alice = h.token("alice", "operator").await;
    let victor = h.token("victor", "viewer").await;
    Agent::enroll(&h, "store-9", json!({"region": "eu"})).await;
    let key = device_key(&keys::generate());

    // A viewer may not import.
    let (s, _) = import(&h, &victor, "csv", "site_id\nstore-1\n").await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let file = format!(
        "{{\"site_id\": \"store-1\", \"labels\": {{\"region\": \"eu\"}}, \"device_key\": \"{key}\"}}\n\
         {{\"site_id\": \"Store 2\"}}\n\
         {{\"site_id\": \"store-3\", \"labels\": {{\"region\": \"eu,us\"}}}}\n\
         {{\"site_id\": \"store-4\", \"device_key\": \"00ff\"}}\n\
         {{\"site_id\": \"store-1\"}}\n\
         {{\"site_id\": \"store-6\", \"device_key\": \"{key}\"}}\n\
         not json\n"
    );
    let (s, v) = import(&h, &alice, "jsonl", &file).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["code"], "invalid_import");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the import was refused and nothing was stored: line 2, site_id:"),
        "{message}"
    );
    for part in [
        "line 3, labels.region:",
        "line 4, device_key:",
        "line 5, site_id: site store-1 is listed twice (first on line 1)",
        "line 6, device_key: the same device key is on line 1",
        "line 7, line: not a site object",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }

    // A site enrolled already (line 3), found only after every line reads well.
    let file = format!("site_id,device_key\nstore-1,{key}\nstore-2,\nstore-9,\n");
    let (s, v) = import(&h, &alice, "csv", &file).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        v["error"]["message"],
        "the import was refused and nothing was stored: line 4, site_id: site store-9 is \
         already enrolled (an enrolled site's key is replaced only with `fleetwave site rekey \
         store-9`)"
    );

    // A header that does not name the columns.
    let (s, v) = import(&h, &alice, "csv", "site,region\nstore-1,eu\n").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1, header: unknown column \"site\""),
        "{v}"
    );
    // An unknown format.
    let (s, v) = h
        .post(
            "/v1/sites/import",
            &alice,
            json!({"format": "xlsx", "text": "site_id\nstore-1\n"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // Over the size limit: a clear refusal.
    let huge = "x".repeat(fleetwave_shared::protocol::operator::MAX_SITE_IMPORT_BYTES);
    let (s, v) = import(&h, &alice, "csv", &huge).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("split the file"),
        "{v}"
    );

    // Nothing of any of them was stored or audited.
    assert_eq!(site_ids(&h).await, ["store-9"]);
    let unbound: Vec<Value> = enrollment_tokens(&h)
        .await
        .into_iter()
        .filter(|t| !t["site_id"].is_null())
        .collect();
    assert!(unbound.is_empty(), "{unbound:?}");
    assert!(audit_of(&h, "site.import").await.is_empty());
}

#[tokio::test]
async fn many_lines_go_in_chunks_all_or_nothing() {
    let h = Harness::new().await;
    // 12,001 sites: three chunks. The last line is bad: nothing is stored.
    let mut file = String::from("site_id,label:region,device_key\n");
    for i in 0..12_000 {
        file.push_str(&format!(
            "site-{i:05},r{},{}\n",
            i % 7,
            device_key(&keys::generate())
        ));
    }
    let (s, v) = import(&h, &h.admin, "csv", &format!("{file}BAD,r1,\n")).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 12002, site_id: \"BAD\""),
        "{v}"
    );
    assert!(site_ids(&h).await.is_empty());

    let (s, v) = import(&h, &h.admin, "csv", &file).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["sites"].as_u64(), v["registered"].as_u64()),
        (Some(12_000), Some(12_000))
    );
    let (_, page) = h
        .get("/v1/sites?label=region=r3&limit=1000", &h.admin)
        .await;
    assert_eq!(page["sites"].as_array().unwrap().len(), 1000);
    let (s, last) = h.get("/v1/sites/site-11999", &h.admin).await;
    assert_eq!(s, StatusCode::OK, "{last}");
    assert_eq!(audit_of(&h, "site.import").await.len(), 1);
}

#[tokio::test]
async fn a_pre_registered_site_joins_the_active_rollout_that_selects_it() {
    let h = Harness::new().await;
    h.publish("2.5.0", 25).await;
    Agent::enroll(&h, "store-1", json!({"format": "store"})).await;
    let rollout = h
        .create_rollout(
            "name = \"pos 2.5\"\nrelease = \"pos-2.5.0\"\nselector = { format = \"store\" }\n\n\
             [[waves]]\nname = \"all\"\ngate = { bake = \"1h\" }\n",
        )
        .await;
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{rollout}/start"),
            &h.admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let key = keys::generate();
    let file = format!(
        "{{\"site_id\": \"store-2\", \"labels\": {{\"format\": \"store\"}}, \"device_key\": \"{}\"}}\n",
        device_key(&key)
    );
    let (s, v) = import(&h, &h.admin, "jsonl", &file).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, view) = h.get(&format!("/v1/rollouts/{rollout}"), &h.admin).await;
    assert_eq!(view["waves"][0]["tally"]["sites"], 2, "{view}");
    // Its box opens a session with its key and finds its assignment.
    let (s, v) = session(&h, "store-2", &key).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let res = h
        .http
        .get(h.url("/v1/agent/poll?wait=0&root_version=1"))
        .bearer_auth(v["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert!(body["assignment"].is_object(), "{body}");
}

fn imported_site(id: &str) -> ImportedSite {
    ImportedSite {
        id: id.into(),
        device_key: device_key(&keys::generate()),
        labels: BTreeMap::from([("region".to_string(), "eu".to_string())]),
        at: Timestamp::now(),
    }
}

fn imported_token(id: &str, site: &str) -> ImportedToken {
    ImportedToken {
        token_hash: format!("hash-of-{id}"),
        record: EnrollmentTokenRecord {
            id: id.into(),
            labels: BTreeMap::new(),
            site_id: Some(site.into()),
            expires_at: Timestamp::now() + SignedDuration::from_secs(60),
            uses_total: 1,
            uses_left: 1,
            revoked: false,
            created_at: Timestamp::now(),
            created_by: "test".into(),
        },
    }
}

/// What the API does when a later chunk finds a site taken (an agent enrolled it between
/// the check and the write): that chunk stores nothing, and the undo removes the earlier
/// chunks' sites, their indexed labels and their tokens.
fn a_chunk_that_finds_a_site_taken_stores_nothing_and_the_import_is_undone(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open();
    store.import_sites(&[imported_site("taken")], &[]).unwrap();
    store
        .import_sites(&[imported_site("a")], &[imported_token("et-1", "b")])
        .unwrap();
    let err = store
        .import_sites(&[imported_site("c")], &[imported_token("et-2", "taken")])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::SiteExists(s) if s == "taken"),
        "{err}"
    );
    assert_eq!(
        store
            .existing_sites(&["a".into(), "c".into(), "taken".into()])
            .unwrap(),
        ["a", "taken"]
    );
    store
        .undo_site_import(&["a".into()], &["et-1".into()])
        .unwrap();
    assert_eq!(
        store.existing_sites(&["a".into(), "taken".into()]).unwrap(),
        ["taken"]
    );
    let tokens: Vec<String> = store
        .list_enrollment_tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert!(tokens.is_empty(), "{tokens:?}");
    let labels = db.strings("SELECT site_id FROM site_labels");
    assert_eq!(
        labels.len(),
        1,
        "only the site that was there before keeps labels"
    );
}

both_backends!(a_chunk_that_finds_a_site_taken_stores_nothing_and_the_import_is_undone);
