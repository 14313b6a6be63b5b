//! Air-gapped bundles and refused assignments: a bundle is verified exactly like a poll
//! answer, so it is also where the tests hand the agent documents no honest coordinator
//! would send (an expired assignment, a replayed sequence, a tampered artifact).
//!
//! The site enrolls with a real coordinator (for its root and keys), then runs with
//! `coordinator.url = ""` like an air-gapped box. Needs `fleetwave-demo-app` built:
//! `cargo build -p fleetwave-e2e --bin fleetwave-demo-app`.

mod common;

use std::path::{Path, PathBuf};

use common::{Coordinator, Site, demo_artifact, eventually};
use fleetwave_shared::{Assignment, Envelope};
use jiff::{SignedDuration, Timestamp};

fn assignment(
    site: &str,
    rollout: &str,
    sequence: u64,
    release: &Envelope,
    expires_in: SignedDuration,
) -> Assignment {
    let now = Timestamp::now();
    Assignment {
        site_id: site.into(),
        rollout_id: rollout.into(),
        wave: 0,
        release_sha256: release.digest(),
        sequence,
        not_before: now - SignedDuration::from_mins(1),
        issued_at: now - SignedDuration::from_mins(1),
        expires: now + expires_in,
        rollback: false,
        window: None,
    }
}

/// Writes a bundle: manifest, documents and `artifacts/<sha256>` files.
fn write_bundle(
    dir: &Path,
    name: &str,
    assignment: &Envelope,
    release: &Envelope,
    artifacts: &[(&str, &[u8])],
) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes).unwrap();
    };
    let manifest = serde_json::json!({
        "format": "fleetwave-bundle-v1",
        "roots": [],
        "assignment": "assignment.json",
        "release": "release.json",
    });
    add("manifest.json", manifest.to_string().as_bytes());
    add("assignment.json", &assignment.to_json());
    add("release.json", &release.to_json());
    for (sha, bytes) in artifacts {
        add(&format!("artifacts/{sha}"), bytes);
    }
    tar.into_inner().unwrap().finish().unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn air_gapped_bundle_installs_and_bad_documents_are_refused() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("remote-1", &coordinator);
    site.enroll(&coordinator).await;
    // From now on the box is air-gapped.
    let config = std::fs::read_to_string(&site.config).unwrap();
    let config = config.replace(&format!("url = \"{}\"", coordinator.url), "url = \"\"");
    std::fs::write(&site.config, config).unwrap();
    let dir = site.dir.path();

    let bytes = demo_artifact("1.0.0", true);
    let sha = fleetwave_shared::sha256_hex(&bytes);
    let release = coordinator.sign_demo_release("1.0.0", 1, &bytes, &sha, &site);
    let a1 = coordinator.sign_assignment(&assignment(
        "remote-1",
        "r1",
        1,
        &release,
        SignedDuration::from_hours(1),
    ));
    let good = write_bundle(dir, "good.fwbundle", &a1, &release, &[(&sha, &bytes)]);
    let (code, out, err) = site
        .cli(&["import-bundle", good.to_str().unwrap(), "--json"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    let imported: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(imported["new_assignment"], true);
    assert!(
        dir.join("staging/artifacts").join(&sha).exists(),
        "artifact staged where the download step finds it"
    );

    // The same bundle again: known, not an error.
    let (code, out, _) = site
        .cli(&["import-bundle", good.to_str().unwrap(), "--json"])
        .await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["new_assignment"],
        false
    );

    // A different assignment reusing sequence 1: a replay.
    let replay = coordinator.sign_assignment(&assignment(
        "remote-1",
        "r-other",
        1,
        &release,
        SignedDuration::from_hours(1),
    ));
    let path = write_bundle(dir, "replay.fwbundle", &replay, &release, &[(&sha, &bytes)]);
    let (code, _, err) = site.cli(&["import-bundle", path.to_str().unwrap()]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("replay"), "{err}");

    // An expired assignment, even with a fresh sequence.
    let expired = coordinator.sign_assignment(&assignment(
        "remote-1",
        "r2",
        5,
        &release,
        SignedDuration::from_secs(-10),
    ));
    let path = write_bundle(
        dir,
        "expired.fwbundle",
        &expired,
        &release,
        &[(&sha, &bytes)],
    );
    let (code, _, err) = site.cli(&["import-bundle", path.to_str().unwrap()]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("expired"), "{err}");

    // Another site's assignment.
    let foreign = coordinator.sign_assignment(&assignment(
        "remote-2",
        "r3",
        7,
        &release,
        SignedDuration::from_hours(1),
    ));
    let path = write_bundle(
        dir,
        "foreign.fwbundle",
        &foreign,
        &release,
        &[(&sha, &bytes)],
    );
    let (code, _, err) = site.cli(&["import-bundle", path.to_str().unwrap()]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("wrong_site"), "{err}");

    // A tampered artifact: nothing is staged under the signed hash.
    let bytes2 = demo_artifact("2.0.0", true);
    let sha2 = fleetwave_shared::sha256_hex(&bytes2);
    let release2 = coordinator.sign_demo_release("2.0.0", 2, &bytes2, &sha2, &site);
    let a8 = coordinator.sign_assignment(&assignment(
        "remote-1",
        "r4",
        8,
        &release2,
        SignedDuration::from_hours(1),
    ));
    let mut evil = bytes2.clone();
    let last = evil.len() - 1;
    evil[last] ^= 0xff;
    let path = write_bundle(dir, "tampered.fwbundle", &a8, &release2, &[(&sha2, &evil)]);
    let (code, _, err) = site.cli(&["import-bundle", path.to_str().unwrap()]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("does not match"), "{err}");
    assert!(!dir.join("staging/artifacts").join(&sha2).exists());

    // Every refusal is queued for the coordinator.
    let status = site.status().await;
    assert_eq!(
        status["queued_reports"]["by_kind"]["refusal"], 3,
        "{status}"
    );
    assert_eq!(
        status["assignment"]["rollout_id"], "r1",
        "the refused bundles changed nothing"
    );

    // The daemon installs the imported assignment without a coordinator (no lease).
    let mut agent = site.run(&[]);
    let last = eventually("the bundle's release is committed", || async {
        let last = site.status().await["last_install"].clone();
        last["outcome"].is_string().then_some(last)
    })
    .await;
    assert_eq!(last["outcome"], "committed", "{}", site.logs());
    eventually("demo 1.0.0 answers", || async {
        (site.app_version().await.as_deref() == Some("1.0.0")).then_some(())
    })
    .await;
    agent.kill().await.unwrap();
}

// ---- a bundle that would make the agent allocate before any signature check ---------------

/// Deflate bits, least significant first (RFC 1951).
struct Bits {
    out: Vec<u8>,
    acc: u64,
    len: u32,
}

impl Bits {
    fn put(&mut self, value: u32, len: u32) {
        self.acc |= u64::from(value) << self.len;
        self.len += len;
        while self.len >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.len -= 8;
        }
    }

    /// A Huffman code: most significant bit first.
    fn code(&mut self, code: u32, len: u32) {
        self.put(code.reverse_bits() >> (32 - len), len);
    }

    /// A literal byte in the fixed Huffman code.
    fn literal(&mut self, byte: u8) {
        match byte {
            0..=143 => self.code(0x30 + u32::from(byte), 8),
            _ => self.code(0x190 + u32::from(byte) - 144, 9),
        }
    }
}

/// The CRC-32 (gzip's) of bytes.
fn crc32(crc: u32, bytes: &[u8]) -> u32 {
    let mut reg = !crc;
    for b in bytes {
        reg ^= u32::from(*b);
        for _ in 0..8 {
            reg = if reg & 1 == 1 {
                (reg >> 1) ^ 0xEDB8_8320
            } else {
                reg >> 1
            };
        }
    }
    !reg
}

/// The CRC-32 after `n` more zero bytes, in O(log n) (zlib's `crc32_combine` method: the
/// register's response to zeros is a GF(2) matrix, squared per bit of `n`).
fn crc32_zeros(crc: u32, mut n: u64) -> u32 {
    fn times(m: &[u32; 32], mut v: u32) -> u32 {
        let (mut sum, mut i) = (0, 0);
        while v != 0 {
            if v & 1 == 1 {
                sum ^= m[i];
            }
            v >>= 1;
            i += 1;
        }
        sum
    }
    fn square(m: &[u32; 32]) -> [u32; 32] {
        std::array::from_fn(|i| times(m, m[i]))
    }
    let one_bit: [u32; 32] =
        std::array::from_fn(|i| if i == 0 { 0xEDB8_8320 } else { 1 << (i - 1) });
    let mut op = square(&square(&square(&one_bit)));
    let mut reg = !crc;
    while n > 0 {
        if n & 1 == 1 {
            reg = times(&op, reg);
        }
        op = square(&op);
        n >>= 1;
    }
    !reg
}

/// A gzip file of a tar holding one GNU long-name header that announces `claimed` bytes,
/// followed by them (zeros) and the end-of-archive blocks. Deflated by hand with the fixed
/// Huffman code (zero, then runs of 258 zeros at distance 1), so that a gigabyte takes
/// well under a second to write: about 6 MB of file.
fn long_name_bomb(path: &Path, claimed: u64) {
    let mut header = tar::Header::new_gnu();
    header.set_path("././@LongLink").unwrap();
    header.set_entry_type(tar::EntryType::GNULongName);
    header.set_size(claimed);
    header.set_mode(0o644);
    header.set_cksum();
    let head = header.as_bytes();
    let zeros = claimed.div_ceil(512) * 512 + 1024;
    let mut bits = Bits {
        out: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
        acc: 0,
        len: 0,
    };
    bits.put(1, 1); // the last block
    bits.put(1, 2); // fixed Huffman codes
    for b in head {
        bits.literal(*b);
    }
    bits.literal(0);
    for _ in 0..(zeros - 1) / 258 {
        bits.code(0xC5, 8); // length 258 (symbol 285)
        bits.code(0, 5); // distance 1
    }
    for _ in 0..(zeros - 1) % 258 {
        bits.literal(0);
    }
    bits.code(0, 7); // end of block
    if bits.len > 0 {
        bits.put(0, 8 - bits.len);
    }
    let mut out = bits.out;
    let total = head.len() as u64 + zeros;
    out.extend(crc32_zeros(crc32(0, head), zeros).to_le_bytes());
    out.extend((total as u32).to_le_bytes());
    std::fs::write(path, out).unwrap();
}

/// The largest resident set of any child process of this test process that has ended, in
/// bytes (Linux reports KiB).
fn children_peak_rss() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn the_long_name_bomb_is_a_valid_gzip_of_what_it_claims() {
    // The generator, checked on a small size by the real decoder (CRC and length).
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.fwbundle");
    long_name_bomb(&path, 100_000);
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain.len(), 512 + 100_352 + 1024);
    let header = tar::Header::from_byte_slice(&plain[..512]);
    assert_eq!(header.entry_type(), tar::EntryType::GNULongName);
    assert_eq!(header.entry_size().unwrap(), 100_000);
    assert!(plain[512..].iter().all(|b| *b == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_long_name_is_refused_on_its_header_without_allocating_it() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("remote-1", &coordinator);
    site.enroll(&coordinator).await;
    let dir = site.dir.path();
    // About 6 MB that unpack to a GNU long name of a billion bytes: the tar reader reads a
    // long name into memory whole (and doubles its buffer on the way, to 2 GB).
    let bomb = dir.join("bomb.fwbundle");
    long_name_bomb(&bomb, 1_000_000_000);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 8_000_000);

    let (code, out, err) = site.cli(&["import-bundle", bomb.to_str().unwrap()]).await;
    assert_eq!(code, 4, "{out}{err}");
    assert!(
        err.contains("a GNU long name of 1000000000 bytes is over the 4096-byte limit"),
        "{err}"
    );
    // No agent process this test started came near the announced size (an agent CLI is
    // a few tens of MB).
    let peak = children_peak_rss();
    assert!(
        peak < 256 << 20,
        "an agent process peaked at {} MiB",
        peak >> 20
    );
    assert!(
        !dir.join("staging/artifacts").exists() || {
            std::fs::read_dir(dir.join("staging/artifacts"))
                .unwrap()
                .count()
                == 0
        }
    );
}
