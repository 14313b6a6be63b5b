//! Unpacking refuses every entry that could escape the install directory, and nothing is
//! written outside it.

#[path = "fixtures/support.rs"]
mod support;

use std::path::Path;

use fleetwave_agent::executor::unpack::unpack_tar_gz;
use support::TarBuilder;

/// Unpacks `archive` into `<tmp>/root/dest` and returns the error code and message, after
/// checking that nothing appeared beside `dest`.
fn unpack_refused(archive: Vec<u8>) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let dest = root.join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let file = tmp.path().join("a.tar.gz");
    std::fs::write(&file, archive).unwrap();
    let err = unpack_tar_gz(&file, &dest, "a.tar.gz").unwrap_err();
    assert_eq!(err.code(), "unsafe_archive", "{err}");
    let beside: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        beside,
        vec![std::ffi::OsString::from("dest")],
        "wrote outside dest"
    );
    assert!(!Path::new("/tmp/fleetwave-escape-canary").exists());
    err.to_string()
}

#[test]
fn a_dot_dot_path_is_refused() {
    let mut b = TarBuilder::new();
    b.file("ok.txt", b"fine").file("../evil.txt", b"pwned");
    let msg = unpack_refused(b.finish());
    assert!(msg.contains("../evil.txt") && msg.contains(".."), "{msg}");
}

#[test]
fn an_absolute_path_is_refused() {
    let mut b = TarBuilder::new();
    b.file("/tmp/fleetwave-escape-canary", b"pwned");
    let msg = unpack_refused(b.finish());
    assert!(msg.contains("absolute"), "{msg}");
}

#[test]
fn a_symlink_pointing_outside_is_refused() {
    let mut b = TarBuilder::new();
    b.symlink("etc", "/etc");
    assert!(unpack_refused(b.finish()).contains("absolute"));
    let mut b = TarBuilder::new();
    b.dir("sub").symlink("sub/up", "../../..");
    assert!(unpack_refused(b.finish()).contains("outside"));
}

#[test]
fn writing_through_a_symlink_is_refused() {
    // `link -> .` passes the target check; `b -> link/..` would resolve above the root.
    let mut b = TarBuilder::new();
    b.symlink("link", ".").symlink("b", "link/..");
    assert!(unpack_refused(b.finish()).contains("'..' after"));
    // A file written through a symlink to an inside directory is refused too.
    let mut b = TarBuilder::new();
    b.dir("real").symlink("alias", "real").file("alias/x", b"x");
    assert!(unpack_refused(b.finish()).contains("through a symlink"));
}

#[test]
fn hard_links_outside_or_to_missing_files_are_refused() {
    let mut b = TarBuilder::new();
    b.hardlink("passwd", "/etc/passwd");
    assert!(unpack_refused(b.finish()).contains("hard link target"));
    let mut b = TarBuilder::new();
    b.hardlink("x", "../outside");
    assert!(unpack_refused(b.finish()).contains("hard link target"));
    let mut b = TarBuilder::new();
    b.hardlink("x", "not-there");
    assert!(unpack_refused(b.finish()).contains("not in the archive"));
}

#[test]
fn device_files_and_fifos_are_refused() {
    for kind in [
        tar::EntryType::Char,
        tar::EntryType::Block,
        tar::EntryType::Fifo,
    ] {
        let mut b = TarBuilder::new();
        b.special("dev", kind);
        assert!(unpack_refused(b.finish()).contains("device file or FIFO"));
    }
}

#[test]
fn a_garbage_file_is_not_an_archive() {
    let msg = unpack_refused(b"this is not gzip".to_vec());
    assert!(msg.contains("not a readable tar.gz"), "{msg}");
}

#[test]
fn a_well_formed_archive_with_inside_links_unpacks() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let mut b = TarBuilder::new();
    b.dir("./bin")
        .file("./bin/app", b"#!/bin/sh\necho hi\n")
        .dir("lib")
        .file("lib/libx.so.1", b"lib")
        .symlink("lib/libx.so", "libx.so.1")
        .symlink("bin/lib", "../lib")
        .hardlink("lib/copy", "lib/libx.so.1");
    let file = tmp.path().join("a.tar.gz");
    std::fs::write(&file, b.finish()).unwrap();
    unpack_tar_gz(&file, &dest, "a.tar.gz").unwrap();
    assert_eq!(
        std::fs::read(dest.join("bin/app")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(std::fs::read(dest.join("lib/libx.so")).unwrap(), b"lib");
    assert_eq!(
        std::fs::read(dest.join("bin/lib/libx.so.1")).unwrap(),
        b"lib"
    );
    assert_eq!(std::fs::read(dest.join("lib/copy")).unwrap(), b"lib");
}
