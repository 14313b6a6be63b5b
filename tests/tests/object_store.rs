//! Artifacts in an object store, over real processes: the coordinator keeps the release's
//! artifact in a real S3-compatible server (SeaweedFS on loopback, TLS signed by the test's
//! own CA) and answers the agents' downloads with presigned URLs; the agents follow them,
//! verify the bytes against the signed SHA-256, and install. The coordinator streams none
//! of the artifact's bytes itself.

use std::path::{Path, PathBuf};

use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{Fleet, FleetOptions, FleetSpec, PlanSpec, WaveSpec};
use fleetwave_shared::protocol::operator::RolloutStatus;
use fleetwave_testkit::weed::{ACCESS_KEY, SECRET_KEY, Weed};

/// A CA and a certificate for 127.0.0.1 signed by it (the object store's TLS), as files:
/// (CA, certificate, key).
fn store_tls(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse()?));
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &Issuer::new(ca, ca_key))?;
    let (ca_path, cert, key) = (
        dir.join("s3-ca.pem"),
        dir.join("s3.pem"),
        dir.join("s3.key"),
    );
    std::fs::write(&ca_path, ca_cert.pem())?;
    std::fs::write(&cert, leaf_cert.pem())?;
    std::fs::write(&key, leaf_key.serialize_pem())?;
    Ok((ca_path, cert, key))
}

/// The fleet's options for artifacts in `weed`'s bucket `fleet`.
fn s3_options(weed: &Weed, dir: &Path, ca: &Path) -> anyhow::Result<FleetOptions> {
    let secret = dir.join("s3-secret");
    std::fs::write(&secret, SECRET_KEY)?;
    Ok(FleetOptions {
        coordinator_extra: format!(
            "\n[artifacts]\nstore = \"s3\"\n\n[artifacts.s3]\nbucket = \"fleet\"\n\
             endpoint = \"{}\"\naccess_key_id = \"{ACCESS_KEY}\"\n\
             secret_access_key_file = \"{}\"\nca_file = \"{}\"\n",
            weed.https_endpoint,
            secret.display(),
            ca.display()
        ),
        agent_extra_ca: Some(ca.to_path_buf()),
        ..FleetOptions::default()
    })
}

/// Starts the fleet, rolls release 1.0.0 out to every site in one wave, and waits until
/// the rollout completed and every site runs it.
fn install_everywhere(
    spec: &FleetSpec,
    options: FleetOptions,
    name: &str,
) -> anyhow::Result<Fleet> {
    let fleet = Fleet::start_with(spec.clone(), options)?;
    let release = DemoRelease::good("1.0.0", 1);
    fleet.publish(&release)?;
    let id = fleet.rollout(&PlanSpec::new(
        name,
        &release.id,
        vec![WaveSpec::new("all")],
    ))?;
    fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    for site in &spec.sites {
        fleet.wait_version(&site.id, "1.0.0")?;
    }
    Ok(fleet)
}

#[test]
fn agents_download_the_artifact_from_the_object_store_through_presigned_urls() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let (ca, cert, key) = store_tls(dir.path())?;
    let weed =
        Weed::start(&dir.path().join("weed"), &cert, &key, "fleet").map_err(anyhow::Error::msg)?;
    let options = s3_options(&weed, dir.path(), &ca)?;
    let spec = FleetSpec::cohorts(1, 1, 1, 0);
    let fleet = install_everywhere(&spec, options, "through the bucket")?;
    // Every site was sent to the bucket; the coordinator streamed no artifact byte.
    let redirects = fleet.operator.counter("artifact_redirects")?;
    assert!(
        redirects >= spec.sites.len() as u64,
        "{redirects} redirects for {} sites",
        spec.sites.len()
    );
    assert_eq!(fleet.operator.counter("artifact_bytes_served")?, 0);
    drop(weed);
    Ok(())
}

/// Some sites cannot reach the object store (here: its public endpoint is a closed port on
/// loopback): their agents get the presigned URL, fail to reach it, and download through
/// the coordinator (`?direct=1`) instead, still verified against the signed SHA-256.
#[test]
fn agents_that_cannot_reach_the_object_store_download_through_the_coordinator() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let (ca, cert, key) = store_tls(dir.path())?;
    let weed =
        Weed::start(&dir.path().join("weed"), &cert, &key, "fleet").map_err(anyhow::Error::msg)?;
    // A port nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut options = s3_options(&weed, dir.path(), &ca)?;
    options
        .coordinator_extra
        .push_str(&format!("public_endpoint = \"https://{closed}\"\n"));
    let spec = FleetSpec::cohorts(1, 1, 0, 0);
    let fleet = install_everywhere(&spec, options, "store unreachable")?;
    // Redirected first (the store is unreachable), then streamed by the coordinator.
    assert!(fleet.operator.counter("artifact_redirects")? >= spec.sites.len() as u64);
    let served = fleet.operator.counter("artifact_bytes_served")?;
    assert!(served > 0, "the coordinator streamed no artifact byte");
    drop(weed);
    Ok(())
}
