//! The OpenAPI document a real coordinator serves at `/openapi.json`: valid OpenAPI 3.1
//! by the official schema, no dangling `$ref`, a schema for every parameter, and the same
//! operations as the real router, both ways (every route documented, every documented
//! operation routed). The fuzz pass over the same document is `scripts/fuzz-api`.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use fleetwave_coordinator::config::Config;
use fleetwave_coordinator::init::{InitOptions, init};
use fleetwave_coordinator::server::{self, Running, Transport, start};
use serde_json::Value;
use tower::ServiceExt as _;

/// The official JSON Schema of OpenAPI 3.1 documents
/// (<https://spec.openapis.org/oas/3.1/schema/2022-10-07>, Apache-2.0, as shipped by
/// openapi-spec-validator).
const OPENAPI_31_SCHEMA: &str = include_str!("data/openapi-3.1-schema.json");

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

struct Served {
    _dir: tempfile::TempDir,
    running: Running,
    doc: Value,
}

/// A coordinator from `init --dev-root` on 127.0.0.1:0 (plain HTTP), and the document it
/// serves.
async fn serve() -> Served {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let out = init(&InitOptions::dev_loopback(dir.path().to_path_buf())).unwrap();
    let config = Config::load(&out.config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = start(config, Transport::InsecurePlainHttp, listener)
        .await
        .unwrap();
    let url = format!("http://{}/openapi.json", running.local_addr);
    let res = reqwest::get(url).await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let doc = res.json().await.unwrap();
    Served {
        _dir: dir,
        running,
        doc,
    }
}

/// Every `(JSON pointer, value)` in `v`, depth first.
fn walk<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
    out.push((at.clone(), v));
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let k = k.replace('~', "~0").replace('/', "~1");
                walk(child, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                walk(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// `(path, method, operation)` for every operation of the document.
fn operations(doc: &Value) -> Vec<(String, &'static str, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if let Some(op) = item.get(*m) {
                out.push((path.clone(), *m, op));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_served_document_is_valid_openapi_3_1() {
    let served = serve().await;
    let schema: Value = serde_json::from_str(OPENAPI_31_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the OpenAPI 3.1 schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&served.doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "/openapi.json is not valid OpenAPI 3.1:\n{}",
        errors.join("\n")
    );
    assert!(served.doc["openapi"].as_str().unwrap().starts_with("3.1."));
    served.running.stop().await;
}

#[tokio::test]
async fn every_ref_resolves_and_every_parameter_has_a_schema() {
    let served = serve().await;
    let doc = &served.doc;
    let mut all = Vec::new();
    walk(doc, String::new(), &mut all);
    let mut problems = Vec::new();
    for (at, v) in &all {
        if let Some(Value::String(target)) = v.get("$ref") {
            let resolves = target
                .strip_prefix('#')
                .is_some_and(|pointer| doc.pointer(pointer).is_some());
            if !resolves {
                problems.push(format!("{at}: $ref {target} does not resolve"));
            }
        }
    }
    let mut ids = BTreeSet::new();
    for (path, method, op) in operations(doc) {
        let where_ = format!("{} {path}", method.to_uppercase());
        let id = op["operationId"].as_str().unwrap_or_default().to_string();
        if id.is_empty() || !ids.insert(id.clone()) {
            problems.push(format!(
                "{where_}: operationId {id:?} missing or not unique"
            ));
        }
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        for p in &params {
            if !p["schema"].is_object() {
                problems.push(format!("{where_}: parameter {} has no schema", p["name"]));
            }
        }
        let declared: BTreeSet<&str> = params
            .iter()
            .filter(|p| p["in"] == "path" && p["required"] == true)
            .filter_map(|p| p["name"].as_str())
            .collect();
        let in_template: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        if declared != in_template {
            problems.push(format!(
                "{where_}: path parameters {declared:?}, template has {in_template:?}"
            ));
        }
        if op["responses"].as_object().is_none_or(|r| r.is_empty()) {
            problems.push(format!("{where_}: no responses"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    served.running.stop().await;
}

/// The route paths of an axum router. axum has no API to list them, but its `Debug`
/// prints each path router's `Node { paths: {RouteId(n): "/path", ...} }`; the test below
/// fails loudly if that ever stops finding the API's paths.
fn router_paths(router: &axum::Router) -> BTreeSet<String> {
    let text = format!("{router:?}");
    let mut out = BTreeSet::new();
    for entry in text.split("RouteId(").skip(1) {
        // `7): "/v1/sites/{id}", ...` (the route table itself prints `7): MethodRouter(..)`).
        let Some((id, rest)) = entry.split_once("): \"") else {
            continue;
        };
        if id.bytes().all(|b| b.is_ascii_digit())
            && let Some((path, _)) = rest.split_once('"')
            && !path.contains("__private__axum")
        {
            out.insert(path.to_string());
        }
    }
    out
}

/// The dashboard is HTML for browsers (docs/dashboard.md), not part of the JSON API; so is
/// the icon browsers ask for at `/favicon.ico`.
fn is_dashboard(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/") || path == "/favicon.ico"
}

/// `(METHOD, path)` pairs without the HEAD that every GET route answers too.
fn without_implicit_head(ops: BTreeSet<(String, String)>) -> BTreeSet<(String, String)> {
    ops.iter()
        .filter(|(m, p)| !(m == "HEAD" && ops.contains(&("GET".to_string(), p.clone()))))
        .cloned()
        .collect()
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let served = serve().await;
    let router = server::router(served.running.app.clone());
    let paths = router_paths(&router);
    for expected in ["/v1/sites/{id}", "/v1/agent/poll", "/healthz", "/ui/"] {
        assert!(
            paths.contains(expected),
            "could not read the router's paths from its Debug output (did axum change it?): \
             {expected} missing from {paths:?}"
        );
    }
    // The methods of each route: a request with a method no route takes is refused with
    // 405 and an Allow header that lists the route's methods.
    let probe = Method::from_bytes(b"PROBE").unwrap();
    let mut routed = BTreeSet::new();
    for path in paths.iter().filter(|p| !is_dashboard(p)) {
        let concrete: Vec<String> = path
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    "probe".to_string()
                } else {
                    s.to_string()
                }
            })
            .collect();
        let req = Request::builder()
            .method(probe.clone())
            .uri(concrete.join("/"))
            .body(Body::empty())
            .unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        assert_eq!(
            res.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{path}: an unknown method must be refused with 405 (and Allow)"
        );
        let allow = res.headers()[header::ALLOW].to_str().unwrap();
        for m in allow.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            routed.insert((m.to_string(), path.clone()));
        }
    }
    let documented: BTreeSet<(String, String)> = operations(&served.doc)
        .into_iter()
        .map(|(path, m, _)| (m.to_uppercase(), path))
        .collect();
    let routed = without_implicit_head(routed);
    let documented = without_implicit_head(documented);
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes the document lacks: {undocumented:?}\ndocumented operations no route serves: {unrouted:?}"
    );
    served.running.stop().await;
}
