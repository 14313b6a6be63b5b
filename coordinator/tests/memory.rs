//! `memory::trim` hands freed memory back to the system (glibc only).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn trim_returns_freed_memory_that_glibc_kept() {
    use fleetwave_coordinator::memory::trim;

    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    // 1 KiB blocks (far below the mmap threshold, so they come from an arena), written so
    // that their pages are resident. The last one stays allocated: glibc then cannot give
    // the freed memory back by shrinking the heap's top, which is what it does on its own.
    let mut blocks: Vec<Vec<u8>> = (0..96 * 1024).map(|i| vec![i as u8; 1024]).collect();
    let keep = blocks.pop().unwrap();
    drop(blocks);
    let before = resident_bytes();
    assert!(trim(), "malloc_trim released nothing");
    let after = resident_bytes();
    assert!(
        before.saturating_sub(after) > 48 << 20,
        "resident {before} bytes before the trim, {after} after: expected at least 48 MiB of \
         the 96 MiB freed to go back"
    );
    drop(keep);
}
