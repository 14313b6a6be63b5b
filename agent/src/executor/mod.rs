//! Executors: prepare, install, verify, commit and roll back a release on this box.
