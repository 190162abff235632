//! Support for Nurture's end-to-end tests: ONNX fixtures built in code, the
//! S3-compatible test server, and paths of the project's binaries.

pub mod fixtures;
pub mod proxy;
pub mod s3;
pub mod server;
pub mod tls;

use std::path::PathBuf;

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace; this is a bug")
        .to_path_buf()
}

/// Path of a workspace binary built into the same target folder as the
/// running test (`cargo build --workspace --bins` builds them; `make test`
/// does this first).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`, as `make test` does)",
        path.display()
    );
    path
}
