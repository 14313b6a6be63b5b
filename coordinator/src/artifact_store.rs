//! Where artifact bytes live: files under `<data_dir>/artifacts` (the default) or an
//! S3-compatible bucket, so that several coordinator replicas, or a coordinator host that
//! is replaced, serve the same artifacts.
//!
//! Either store is untrusted by agents: every artifact is checked against its signed length
//! and SHA-256 after download, wherever the bytes came from. The coordinator checks an
//! upload's hash before the bytes appear under their name in either store.
//!
//! With S3 and `redirect = true`, an agent's `GET /v1/artifacts/{sha256}` is answered with a
//! `307` to a short-lived presigned URL, so the bytes do not pass through the coordinator.
//! `GET /v1/artifacts/{sha256}?direct=1` always streams through the coordinator, for a
//! client that cannot reach the store. (The agent does not ask for it by itself yet: when
//! a presigned URL fails, its download fails and is retried through the redirect later.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::signer::Signer as _;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore as _, ObjectStoreExt as _, path::Path as Key,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::config::{ArtifactStoreKind, Config, S3Config};

/// A stream of an artifact's bytes.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// The artifact store in use.
#[derive(Clone)]
pub enum ArtifactStore {
    /// One file per artifact, named by its SHA-256.
    Local { dir: PathBuf },
    /// One object per artifact, `<prefix><sha256>`.
    S3(Arc<S3Store>),
}

/// An S3-compatible bucket.
pub struct S3Store {
    store: AmazonS3,
    /// Signs URLs for agents (its endpoint is `public_endpoint` when set).
    signer: AmazonS3,
    prefix: String,
    bucket: String,
    redirect: bool,
    /// Presigned URLs are handed out only when agents can follow them (https).
    public_https: bool,
    presign: Duration,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn s3_builder(s3: &S3Config, endpoint: Option<&str>) -> Result<AmazonS3Builder, String> {
    let mut b = match (&s3.access_key_id, &s3.secret_access_key_file) {
        (Some(id), Some(file)) => {
            let secret = std::fs::read_to_string(file).map_err(|e| {
                format!(
                    "artifacts.s3.secret_access_key_file {}: {e}",
                    file.display()
                )
            })?;
            let secret = secret.trim();
            if secret.is_empty() {
                return Err(format!(
                    "artifacts.s3.secret_access_key_file {} is empty",
                    file.display()
                ));
            }
            AmazonS3Builder::new()
                .with_access_key_id(id)
                .with_secret_access_key(secret)
        }
        _ => AmazonS3Builder::from_env(),
    };
    b = b
        .with_bucket_name(&s3.bucket)
        .with_region(&s3.region)
        .with_allow_http(s3.allow_http)
        .with_virtual_hosted_style_request(false);
    if let Some(ep) = endpoint {
        b = b.with_endpoint(ep.trim_end_matches('/'));
    }
    let mut options = ClientOptions::new()
        .with_allow_http(s3.allow_http)
        .with_connect_timeout(Duration::from_secs(10));
    if let Some(ca) = &s3.ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| format!("artifacts.s3.ca_file {}: {e}", ca.display()))?;
        let cert = object_store::Certificate::from_pem(&pem)
            .map_err(|e| format!("artifacts.s3.ca_file {}: {e}", ca.display()))?;
        options = options.with_root_certificate(cert);
    }
    Ok(b.with_client_options(options))
}

fn to_io(e: object_store::Error) -> std::io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())
        }
        other => std::io::Error::other(other.to_string()),
    }
}

impl ArtifactStore {
    /// The store the configuration names. Opening S3 checks the configuration, not the
    /// network: [`ArtifactStore::check`] does that.
    pub fn open(config: &Config) -> Result<ArtifactStore, String> {
        match config.artifacts.store {
            ArtifactStoreKind::Local => Ok(ArtifactStore::Local {
                dir: config.artifact_dir(),
            }),
            ArtifactStoreKind::S3 => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let s3 = config
                    .artifacts
                    .s3
                    .as_ref()
                    .ok_or("store = \"s3\" needs an [artifacts.s3] section")?;
                let store = s3_builder(s3, s3.endpoint.as_deref())?
                    .build()
                    .map_err(|e| format!("artifacts.s3: {e}"))?;
                let public = s3.public_endpoint.as_deref().or(s3.endpoint.as_deref());
                let signer = s3_builder(s3, public)?
                    .build()
                    .map_err(|e| format!("artifacts.s3.public_endpoint: {e}"))?;
                let mut prefix = s3.prefix.trim_matches('/').to_string();
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                Ok(ArtifactStore::S3(Arc::new(S3Store {
                    store,
                    signer,
                    prefix,
                    bucket: s3.bucket.clone(),
                    redirect: s3.redirect,
                    public_https: public.is_none_or(|p| p.starts_with("https://")),
                    presign: Duration::from_secs(s3.presign_secs),
                })))
            }
        }
    }

    /// One line for logs and the start-up banner.
    pub fn describe(&self) -> String {
        match self {
            ArtifactStore::Local { dir } => format!("files in {}", dir.display()),
            ArtifactStore::S3(s) => format!(
                "S3 bucket {} prefix {:?}{}",
                s.bucket,
                s.prefix,
                if s.redirect && s.public_https {
                    ", agents redirected to presigned URLs"
                } else {
                    ", served through the coordinator"
                }
            ),
        }
    }

    /// Whether the store answers (S3: lists one key under the prefix). Called at start-up
    /// so that a wrong bucket or credentials fail there, with their reason, and not at the
    /// first upload.
    pub async fn check(&self) -> std::io::Result<()> {
        match self {
            ArtifactStore::Local { dir } => tokio::fs::create_dir_all(dir).await,
            ArtifactStore::S3(s) => {
                let prefix = s.key_prefix();
                let mut list = s.store.list(prefix.as_ref());
                match list.next().await {
                    None | Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(to_io(e)),
                }
            }
        }
    }

    /// Directory where an upload is written and hashed before it is stored.
    pub fn upload_dir(&self, config: &Config) -> PathBuf {
        match self {
            ArtifactStore::Local { dir } => dir.clone(),
            ArtifactStore::S3(_) => config.data_dir.join("artifact-uploads"),
        }
    }

    /// Stores a verified upload (`tmp`, whose hash is `sha`) under its name. The temp file is
    /// consumed (renamed or deleted).
    pub async fn put(&self, sha: &str, tmp: &Path) -> std::io::Result<()> {
        match self {
            ArtifactStore::Local { dir } => {
                tokio::fs::rename(tmp, dir.join(sha)).await?;
                if let Ok(d) = tokio::fs::File::open(dir).await {
                    let _ = d.sync_all().await;
                }
                Ok(())
            }
            ArtifactStore::S3(s) => {
                let result = async {
                    let mut file = tokio::fs::File::open(tmp).await?;
                    let mut writer = object_store::buffered::BufWriter::new(
                        Arc::new(s.store.clone()),
                        s.key(sha),
                    );
                    tokio::io::copy(&mut file, &mut writer).await?;
                    writer.shutdown().await
                }
                .await;
                let _ = tokio::fs::remove_file(tmp).await;
                result
            }
        }
    }

    /// The stored artifact's length, or None when it is not stored.
    pub async fn len(&self, sha: &str) -> std::io::Result<Option<u64>> {
        match self {
            ArtifactStore::Local { dir } => match tokio::fs::metadata(dir.join(sha)).await {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            ArtifactStore::S3(s) => match s.store.head(&s.key(sha)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(to_io(e)),
            },
        }
    }

    /// Every stored artifact's length, by SHA-256 (one listing).
    pub async fn inventory(&self) -> std::io::Result<HashMap<String, u64>> {
        let mut out = HashMap::new();
        match self {
            ArtifactStore::Local { dir } => {
                let mut rd = match tokio::fs::read_dir(dir).await {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(e),
                };
                while let Some(entry) = rd.next_entry().await? {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if is_sha256(&name) {
                        out.insert(name, entry.metadata().await?.len());
                    }
                }
            }
            ArtifactStore::S3(s) => {
                let prefix = s.key_prefix();
                let mut list = s.store.list(prefix.as_ref());
                while let Some(meta) = list.next().await {
                    let meta = meta.map_err(to_io)?;
                    if let Some(name) = meta.location.filename()
                        && is_sha256(name)
                    {
                        out.insert(name.to_string(), meta.size);
                    }
                }
            }
        }
        Ok(out)
    }

    /// `count` bytes of the artifact from `start`.
    pub async fn read(&self, sha: &str, start: u64, count: u64) -> std::io::Result<ByteStream> {
        if count == 0 {
            return Ok(futures_util::stream::empty().boxed());
        }
        match self {
            ArtifactStore::Local { dir } => {
                let mut file = tokio::fs::File::open(dir.join(sha)).await?;
                file.seek(std::io::SeekFrom::Start(start)).await?;
                let reader = file.take(count);
                Ok(futures_util::stream::unfold(reader, |mut r| async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    match r.read(&mut buf).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            Some((Ok(Bytes::from(buf)), r))
                        }
                        Err(e) => Some((Err(e), r)),
                    }
                })
                .boxed())
            }
            ArtifactStore::S3(s) => {
                let options = GetOptions {
                    range: Some(GetRange::Bounded(start..start + count)),
                    ..GetOptions::default()
                };
                let got = s
                    .store
                    .get_opts(&s.key(sha), options)
                    .await
                    .map_err(to_io)?;
                Ok(got.into_stream().map_err(to_io).boxed())
            }
        }
    }

    /// A presigned URL agents may download the artifact from, when the store hands those
    /// out (S3 with `redirect = true` and an https endpoint for agents).
    pub async fn redirect_url(&self, sha: &str) -> std::io::Result<Option<String>> {
        match self {
            ArtifactStore::Local { .. } => Ok(None),
            ArtifactStore::S3(s) if !(s.redirect && s.public_https) => Ok(None),
            ArtifactStore::S3(s) => {
                let url = s
                    .signer
                    .signed_url(object_store::signer::Method::GET, &s.key(sha), s.presign)
                    .await
                    .map_err(to_io)?;
                Ok(Some(url.to_string()))
            }
        }
    }

    /// True for the local store (backups copy its files; an object store keeps its own).
    pub fn is_local(&self) -> bool {
        matches!(self, ArtifactStore::Local { .. })
    }
}

impl S3Store {
    fn key(&self, sha: &str) -> Key {
        Key::from(format!("{}{sha}", self.prefix))
    }

    fn key_prefix(&self) -> Option<Key> {
        let p = self.prefix.trim_end_matches('/');
        (!p.is_empty()).then(|| Key::from(p))
    }
}

/// 64 lowercase hex characters.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
