//! Release manifests: the TOML or JSON file an operator writes to describe a release,
//! turned into the [`Release`] document that `fleetwave release sign` signs.
//!
//! Every error names the file, the field (`artifacts[0].sha256`) and, for TOML, the line
//! and column. Artifacts given as `file = "path"` are hashed here, so the signed length and
//! SHA-256 are those of the file on disk. This module never signs anything.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use fleetwave_shared::docs::{Artifact, Release, ReleaseKind};
use jiff::Timestamp;
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

/// Why a manifest could not be turned into a release.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}{at}: {message}")]
    Syntax {
        file: String,
        at: Location,
        message: String,
    },
    #[error("{file}{at}: {field}: {message}")]
    Field {
        file: String,
        at: Location,
        field: String,
        message: String,
    },
}

/// `:line:column` in the manifest, when known (TOML always, JSON for syntax errors).
#[derive(Debug, Clone, Copy, Default)]
pub struct Location(Option<(usize, usize)>);

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, ":{line}:{column}"),
            None => Ok(()),
        }
    }
}

/// The manifest as written by the operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    id: String,
    name: String,
    version: String,
    kind: ReleaseKind,
    counter: u64,
    #[serde(default, deserialize_with = "timestamp")]
    issued_at: Option<Timestamp>,
    #[serde(default, deserialize_with = "timestamp")]
    expires: Option<Timestamp>,
    #[serde(default)]
    expires_in: Option<String>,
    artifacts: Vec<ManifestArtifact>,
    #[serde(default)]
    install: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    min_agent_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestArtifact {
    name: String,
    url: String,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    length: Option<u64>,
    #[serde(default)]
    sha256: Option<String>,
}

/// The placeholder in an artifact `url` that is replaced by the artifact's SHA-256.
pub const SHA256_PLACEHOLDER: &str = "{sha256}";

/// A path to a field: `artifacts[0].sha256`.
#[derive(Debug, Clone, Default)]
struct FieldPath(Vec<Segment>);

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

impl FieldPath {
    fn key(&self, key: &str) -> FieldPath {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.to_string()));
        path
    }

    fn index(&self, index: usize) -> FieldPath {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }

    fn from_serde(path: &serde_path_to_error::Path) -> FieldPath {
        use serde_path_to_error::Segment as S;
        FieldPath(
            path.iter()
                .filter_map(|segment| match segment {
                    S::Seq { index } => Some(Segment::Index(*index)),
                    S::Map { key } => Some(Segment::Key(key.clone())),
                    S::Enum { variant } => Some(Segment::Key(variant.clone())),
                    S::Unknown => None,
                })
                .collect(),
        )
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// The parsed source, kept to point errors at lines.
enum Source<'a> {
    Toml {
        text: &'a str,
        table: toml::de::DeValue<'a>,
    },
    Json,
}

impl Source<'_> {
    /// Line and column of the value at `path` (or of its nearest parent that exists).
    fn locate(&self, path: &FieldPath) -> Location {
        let Source::Toml { text, table } = self else {
            return Location::default();
        };
        let mut span = None;
        let mut current = table;
        for segment in &path.0 {
            let next = match segment {
                Segment::Key(key) => current.get(key.as_str()),
                Segment::Index(index) => current.get(*index),
            };
            match next {
                Some(value) => {
                    span = Some(value.span());
                    current = value.get_ref();
                }
                None => break,
            }
        }
        span.map_or(Location::default(), |span| line_column(text, span.start))
    }
}

fn line_column(text: &str, offset: usize) -> Location {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    Location(Some((line, column)))
}

/// Reads the manifest at `path` (`.json` is JSON, anything else TOML) and builds the
/// release. `now` is the default `issued_at` and the base of `expires_in`.
pub fn load(path: &Path, now: Timestamp) -> Result<Release, ManifestError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        file: file.clone(),
        source,
    })?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let is_json = path.extension().is_some_and(|ext| ext == "json");
    parse(&file, &text, is_json, base_dir, now)
}

/// Builds a release from manifest text; `file` names it in errors, `base_dir` resolves
/// artifact `file` paths.
pub fn parse(
    file: &str,
    text: &str,
    is_json: bool,
    base_dir: &Path,
    now: Timestamp,
) -> Result<Release, ManifestError> {
    let (manifest, source) = if is_json {
        let mut de = serde_json::Deserializer::from_str(text);
        let manifest: Manifest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = FieldPath::from_serde(e.path());
            let inner = e.into_inner();
            let at = Location(Some((inner.line(), inner.column())));
            if path.0.is_empty() || inner.is_syntax() || inner.is_eof() {
                ManifestError::Syntax {
                    file: file.to_string(),
                    at,
                    message: inner.to_string(),
                }
            } else {
                ManifestError::Field {
                    file: file.to_string(),
                    at,
                    field: path.to_string(),
                    message: strip_json_position(&inner.to_string()),
                }
            }
        })?;
        (manifest, Source::Json)
    } else {
        let syntax = |e: toml::de::Error| ManifestError::Syntax {
            file: file.to_string(),
            at: e
                .span()
                .map_or(Location::default(), |s| line_column(text, s.start)),
            message: e.message().trim().to_string(),
        };
        let table = toml::de::DeTable::parse(text).map_err(syntax)?;
        let de = toml::Deserializer::from(table.clone());
        let manifest: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = FieldPath::from_serde(e.path());
            let inner = e.into_inner();
            let at = inner
                .span()
                .map_or(Location::default(), |s| line_column(text, s.start));
            let message = inner.message().trim().to_string();
            if path.0.is_empty() {
                ManifestError::Syntax {
                    file: file.to_string(),
                    at,
                    message,
                }
            } else {
                ManifestError::Field {
                    file: file.to_string(),
                    at,
                    field: path.to_string(),
                    message,
                }
            }
        })?;
        let table = toml::de::DeValue::Table(table.into_inner());
        (manifest, Source::Toml { text, table })
    };
    build(manifest, &source, file, base_dir, now)
}

/// serde_json appends " at line L column C" to its messages; the location is shown
/// separately.
fn strip_json_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn build(
    manifest: Manifest,
    source: &Source<'_>,
    file: &str,
    base_dir: &Path,
    now: Timestamp,
) -> Result<Release, ManifestError> {
    let root = FieldPath::default();
    let field = |path: FieldPath, message: String| ManifestError::Field {
        file: file.to_string(),
        at: source.locate(&path),
        field: path.to_string(),
        message,
    };
    for (key, value) in [
        ("id", &manifest.id),
        ("name", &manifest.name),
        ("version", &manifest.version),
    ] {
        if value.trim().is_empty() {
            return Err(field(root.key(key), "must not be empty".into()));
        }
    }
    let issued_at = manifest.issued_at.unwrap_or(now);
    let expires = match (manifest.expires, &manifest.expires_in) {
        (Some(_), Some(_)) => {
            return Err(field(
                root.key("expires_in"),
                "give either expires or expires_in, not both".into(),
            ));
        }
        (Some(expires), None) => expires,
        (None, Some(span)) => {
            add_span(issued_at, span).map_err(|message| field(root.key("expires_in"), message))?
        }
        (None, None) => {
            return Err(field(
                root.key("expires"),
                "missing: give expires = \"2027-01-01T00:00:00Z\" or expires_in = \"90d\"".into(),
            ));
        }
    };
    if expires <= issued_at {
        let key = if manifest.expires.is_some() {
            "expires"
        } else {
            "expires_in"
        };
        return Err(field(
            root.key(key),
            format!("the release would expire ({expires}) before it is issued ({issued_at})"),
        ));
    }
    if manifest.artifacts.is_empty() {
        return Err(field(
            root.key("artifacts"),
            "a release needs at least one artifact".into(),
        ));
    }
    let mut artifacts = Vec::with_capacity(manifest.artifacts.len());
    for (i, artifact) in manifest.artifacts.into_iter().enumerate() {
        let at = root.key("artifacts").index(i);
        artifacts.push(build_artifact(artifact, &at, base_dir, &field)?);
    }
    let release = Release {
        id: manifest.id,
        name: manifest.name,
        version: manifest.version,
        kind: manifest.kind,
        counter: manifest.counter,
        issued_at,
        expires,
        artifacts,
        install: manifest.install,
        min_agent_version: manifest.min_agent_version,
    };
    // The verifier's own checks, so nothing is signed that agents would refuse.
    fleetwave_shared::verify::check_release(&release).map_err(|refusal| ManifestError::Syntax {
        file: file.to_string(),
        at: Location::default(),
        message: refusal.to_string(),
    })?;
    Ok(release)
}

fn build_artifact(
    artifact: ManifestArtifact,
    at: &FieldPath,
    base_dir: &Path,
    field: &dyn Fn(FieldPath, String) -> ManifestError,
) -> Result<Artifact, ManifestError> {
    let name = &artifact.name;
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(field(
            at.key("name"),
            format!("{name:?} must be a plain file name (no directories)"),
        ));
    }
    if let Some(sha256) = &artifact.sha256
        && !is_sha256_hex(sha256)
    {
        return Err(field(
            at.key("sha256"),
            format!("{sha256:?} must be 64 lowercase hex characters"),
        ));
    }
    let (length, sha256) = match &artifact.file {
        Some(file) => {
            let path = base_dir.join(file);
            let (length, sha256) = hash_file(&path).map_err(|e| {
                field(
                    at.key("file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if let Some(listed) = artifact.length
                && listed != length
            {
                return Err(field(
                    at.key("length"),
                    format!(
                        "{listed} does not match {}, which is {length} bytes",
                        path.display()
                    ),
                ));
            }
            if let Some(listed) = &artifact.sha256
                && *listed != sha256
            {
                return Err(field(
                    at.key("sha256"),
                    format!(
                        "{listed} does not match {}, whose SHA-256 is {sha256}",
                        path.display()
                    ),
                ));
            }
            (length, sha256)
        }
        None => match (artifact.length, artifact.sha256) {
            (Some(length), Some(sha256)) => (length, sha256),
            (None, _) => {
                return Err(field(
                    at.key("length"),
                    "missing: give file = \"path\" (length and sha256 are computed) or both length and sha256".into(),
                ));
            }
            (_, None) => {
                return Err(field(
                    at.key("sha256"),
                    "missing: give file = \"path\" (length and sha256 are computed) or both length and sha256".into(),
                ));
            }
        },
    };
    if artifact.url.trim().is_empty() {
        return Err(field(at.key("url"), "must not be empty".into()));
    }
    let url = artifact.url.replace(SHA256_PLACEHOLDER, &sha256);
    if !(url.starts_with('/') || url.starts_with("https://") || url.starts_with("http://")) {
        return Err(field(
            at.key("url"),
            format!(
                "{url:?} must be a coordinator path (\"/v1/artifacts/{{sha256}}\") or an http(s) URL"
            ),
        ));
    }
    Ok(Artifact {
        name: artifact.name,
        url,
        length,
        sha256,
    })
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Length and lowercase hex SHA-256 of a file, streamed.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut length = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        length += n as u64;
    }
    Ok((length, hex::encode(hasher.finalize())))
}

/// `at + span`, where span is a duration such as `90d`, `12h` or `1y` (calendar units in UTC).
pub fn add_span(at: Timestamp, span: &str) -> Result<Timestamp, String> {
    let parsed: jiff::Span = span
        .trim()
        .parse()
        .map_err(|e| format!("{span:?} is not a duration such as \"90d\" or \"12h\": {e}"))?;
    if parsed.is_negative() || parsed.is_zero() {
        return Err(format!("{span:?} must be a positive duration"));
    }
    at.to_zoned(jiff::tz::TimeZone::UTC)
        .checked_add(parsed)
        .map(|z| z.timestamp())
        .map_err(|e| format!("{span:?} is out of range: {e}"))
}

/// Accepts an RFC 3339 string (JSON or TOML) or a TOML offset date-time.
fn timestamp<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Timestamp>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Timestamp;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 time with an offset, such as 2027-01-01T00:00:00Z")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
            v.parse().map_err(|e| {
                E::custom(format!(
                    "{v:?} is not an RFC 3339 time with an offset (such as 2027-01-01T00:00:00Z): {e}"
                ))
            })
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Timestamp, A::Error> {
            // TOML date-times arrive as a one-entry map holding their text.
            let Some((_, text)) = map.next_entry::<String, String>()? else {
                return Err(serde::de::Error::custom("expected a date-time"));
            };
            self.visit_str(&text)
        }
    }
    de.deserialize_any(Visitor).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-06-01T00:00:00Z";

    fn parse_toml(text: &str) -> Result<Release, ManifestError> {
        parse(
            "release.toml",
            text,
            false,
            Path::new("."),
            NOW.parse().unwrap(),
        )
    }

    const GOOD: &str = r#"
id = "pos-2.4.0"
name = "pos"
version = "2.4.0"
kind = "app"
counter = 42
expires_in = "90d"

[install]
format = "tar.gz"

[[artifacts]]
name = "pos-2.4.0.tar.gz"
url = "/v1/artifacts/{sha256}"
length = 10
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"#;

    #[test]
    fn good_manifest_builds_a_release() {
        let release = parse_toml(GOOD).unwrap();
        assert_eq!(release.counter, 42);
        assert_eq!(release.issued_at, NOW.parse::<Timestamp>().unwrap());
        assert_eq!(
            release.expires,
            "2026-08-30T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            release.artifacts[0].url,
            format!("/v1/artifacts/{}", "0".repeat(64))
        );
        assert_eq!(release.install["format"], "tar.gz");
    }

    #[test]
    fn toml_date_times_and_strings_are_both_accepted() {
        let text = GOOD.replace(
            "expires_in = \"90d\"",
            "issued_at = 2026-05-01T00:00:00Z\nexpires = \"2027-01-01T00:00:00Z\"",
        );
        let release = parse_toml(&text).unwrap();
        assert_eq!(
            release.issued_at,
            "2026-05-01T00:00:00Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn bad_sha256_names_the_field_and_line() {
        let text = GOOD.replace(&"0".repeat(64), "XYZ");
        let err = parse_toml(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "release.toml:16:10: artifacts[0].sha256: \"XYZ\" must be 64 lowercase hex characters"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = GOOD.replace("counter = 42", "counter = \"42\"");
        let err = parse_toml(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("release.toml:6:11: counter: invalid type"),
            "{err}"
        );
        let text = GOOD.replace("kind = \"app\"", "kind = \"ap\"");
        let err = parse_toml(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("release.toml:5:8: kind: unknown variant"),
            "{err}"
        );
    }

    #[test]
    fn unknown_and_missing_fields_are_named() {
        let text = GOOD.replace("counter = 42", "counter = 42\ncountr = 43");
        let err = parse_toml(&text).unwrap_err().to_string();
        assert!(err.contains("countr"), "{err}");
        let text = GOOD.replace("expires_in = \"90d\"", "");
        let err = parse_toml(&text).unwrap_err().to_string();
        assert!(err.starts_with("release.toml: expires: missing"), "{err}");
        let text = GOOD.replace("length = 10\n", "");
        let err = parse_toml(&text).unwrap_err().to_string();
        assert!(err.contains("artifacts[0].length: missing"), "{err}");
    }

    #[test]
    fn json_manifest_errors_name_the_field() {
        let text = r#"{"id":"a","name":"pos","version":"1","kind":"app","counter":-1,
            "expires_in":"1d","artifacts":[]}"#;
        let err = parse(
            "release.json",
            text,
            true,
            Path::new("."),
            NOW.parse().unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("release.json:1:62: counter: invalid value"),
            "{err}"
        );
    }

    #[test]
    fn toml_syntax_error_has_a_line() {
        let err = parse_toml("id = \"a\"\nname = \n").unwrap_err().to_string();
        assert!(err.starts_with("release.toml:2:"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
