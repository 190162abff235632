//! The docs harness: every shell block in README.md and docs/*.md runs, in
//! order, one bash shell per file, in a fresh temporary directory that looks
//! like a checkout of the project with an empty `./var`. A file marked
//! `<!-- docs-test: serve -->` first gets a registry with every kind trained
//! and a real `nurture-server` on it; the documented addresses
//! (`127.0.0.1:50051`, metrics `127.0.0.1:9090`, HTTP `127.0.0.1:8000`) are
//! pointed at that server's ports. Blocks marked `no-run` are skipped.
//!
//! The blocks use the release binaries, as a reader would: `make test`
//! builds them first, so the blocks' own `cargo build --release` finds them
//! up to date (they run in `target/docs-checkout`, where cargo finds the
//! project's workspace).

mod blocks;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use blocks::{Addresses, Failure, SERVE, shell_blocks};
use nurture_tests::project_root;

/// The longest one file's blocks may run.
const FILE_TIMEOUT: Duration = Duration::from_secs(600);
/// Rows per kind in the served registry: enough for every kind's quality
/// gate, quick to train.
const SERVED_ROWS: &str = "3000";

/// Project entries a block may use (`var` starts empty). `Cargo.toml` is
/// not among them: the blocks run in `target/docs-checkout`, so cargo finds
/// the project's own workspace above it and builds exactly as it does from
/// the project root (a workspace seen at another path would be rebuilt).
const CHECKOUT: &[&str] = &[
    "target",
    "Makefile",
    "Dockerfile",
    "README.md",
    "docs",
    "proto",
    "models",
    "server",
    "trainer",
    "tests",
    "benches",
    "helm",
    "scripts",
    "rustfmt.toml",
    "clippy.toml",
    ".ort",
    ".tools",
];

/// A release binary of the workspace.
fn release_binary(name: &str) -> PathBuf {
    let path = project_root().join("target/release").join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the release binaries first (`make build` does)",
        path.display()
    );
    path
}

/// A directory that looks like a fresh checkout: symlinks to the project's
/// entries and an empty `var/`.
fn checkout_in(dir: &Path) {
    let root = project_root();
    for entry in CHECKOUT {
        let source = root.join(entry);
        if source.exists() {
            std::os::unix::fs::symlink(&source, dir.join(entry)).expect("symlink");
        }
    }
    std::fs::create_dir(dir.join("var")).expect("var");
}

/// [`checkout_in`] a new temporary directory.
fn checkout() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("nurture-docs-")
        .tempdir()
        .expect("temporary directory");
    checkout_in(dir.path());
    dir
}

/// Where the README's and docs' blocks run: `target/docs-checkout`,
/// emptied first; inside the project, so that their `cargo build` is the
/// project's own (see [`CHECKOUT`]).
fn stable_checkout() -> PathBuf {
    let dir = project_root().join("target/docs-checkout");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("empty the docs checkout");
    }
    std::fs::create_dir_all(&dir).expect("docs checkout");
    checkout_in(&dir);
    dir
}

/// Copies the folder `from` to `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("folder entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Runs a release tool in `dir`; panics with its output if it fails.
fn tool(dir: &Path, name: &str, args: &[&str]) {
    let output = Command::new(release_binary(name))
        .args(args)
        .current_dir(dir)
        .env_remove("NURTURE_REGISTRY")
        .env_remove("ORT_DYLIB_PATH")
        .stdin(Stdio::null())
        .output()
        .expect("tool starts");
    assert!(
        output.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `var/data` and `var/registry` with every kind generated, trained and
/// live, made once per run of the harness and copied into each served file.
fn served_template() -> &'static Path {
    static TEMPLATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let dir = checkout();
            let d = dir.path();
            tool(
                d,
                "nurture-trainer",
                &["generate", "--out", "var/data", "--rows", SERVED_ROWS],
            );
            tool(
                d,
                "nurture-trainer",
                &["train", "all", "--data", "var/data", "--promote", "--json"],
            );
            dir
        })
        .path()
}

/// A release `nurture-server` on 127.0.0.1 (ephemeral ports) serving the
/// file registry in `dir/var`; stopped on drop.
struct Server {
    child: std::process::Child,
    addresses: Addresses,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let log = std::fs::File::create(dir.join("var/server.log")).expect("log file");
        let mut child = Command::new(release_binary("nurture-server"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--poll-interval",
                "500ms",
                "--cache-dir",
                "var/cache",
            ])
            .current_dir(dir)
            .env_remove("NURTURE_REGISTRY")
            .env_remove("ORT_DYLIB_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("nurture-server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut first = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first)
            .expect("the server prints its addresses");
        let field = |name: &str| {
            first
                .split_whitespace()
                .find_map(|part| part.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {first:?}"))
                .to_owned()
        };
        let server = Server {
            addresses: Addresses {
                grpc: field("grpc"),
                metrics: field("metrics"),
                http: field("http"),
            },
            child,
        };
        server.wait_serving();
        server
    }

    /// Waits (at most 60 s) until the server reports SERVING: every model
    /// has a live version loaded.
    fn wait_serving(&self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let endpoint = format!("http://{}", self.addresses.grpc);
        runtime.block_on(nurture_tests::eventually(
            "the docs server is serving",
            Duration::from_secs(60),
            || {
                let endpoint = endpoint.clone();
                async move {
                    use tonic_health::pb::HealthCheckRequest;
                    use tonic_health::pb::health_check_response::ServingStatus;
                    use tonic_health::pb::health_client::HealthClient;
                    let Ok(channel) = tonic::transport::Endpoint::from_shared(endpoint)
                        .expect("a valid endpoint")
                        .connect()
                        .await
                    else {
                        return false;
                    };
                    let mut client = HealthClient::new(channel);
                    client
                        .check(HealthCheckRequest::default())
                        .await
                        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
                }
            },
        ));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the shell blocks of one Markdown file; `Err` says which block
/// failed, where, and what the shell printed.
fn run_file(markdown_path: &Path, dir: &Path) -> Result<(), String> {
    let markdown = std::fs::read_to_string(markdown_path).expect("read Markdown");
    let blocks = shell_blocks(&markdown);
    if !blocks.iter().any(|b| b.runs) {
        return Ok(());
    }
    let server = markdown.contains(SERVE).then(|| {
        copy_tree(&served_template().join("var"), &dir.join("var"));
        Server::start(dir)
    });
    let script = blocks::script(&blocks, server.as_ref().map(|s| &s.addresses));
    let progress = dir.join("var/docs-progress");
    let output = dir.join("var/docs-output");
    std::fs::write(dir.join("var/docs.sh"), &script.text).expect("write script");
    let path = format!(
        "{}:{}",
        project_root().join("target/release").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut bash = Command::new("bash");
    // What `cargo test` set for this test binary is not the reader's
    // environment; some build scripts watch it (ring reruns when
    // CARGO_MANIFEST_DIR changes), so keeping it would rebuild their
    // dependants at every run.
    for (name, _) in std::env::vars() {
        if name == "CARGO" || (name.starts_with("CARGO_") && name != "CARGO_HOME") {
            bash.env_remove(name);
        }
    }
    let mut child = bash
        .arg("var/docs.sh")
        .current_dir(dir)
        .env("PATH", path)
        .env("DOCS_PROGRESS", &progress)
        .env("NURTURE_ACTOR", "docs")
        .env_remove("NURTURE_REGISTRY")
        .env_remove("ORT_DYLIB_PATH")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output).expect("output file"))
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&output)
                .expect("output file"),
        ))
        .process_group(0)
        .spawn()
        .expect("bash starts");
    let started = Instant::now();
    // Whatever the blocks left running in the background (a block that
    // failed before its own `kill`) goes with their process group.
    let group = format!("-{}", child.id());
    let kill_group = || {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
    };
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bash") {
            kill_group();
            break Some(status);
        }
        if started.elapsed() > FILE_TIMEOUT {
            kill_group();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(server);
    let skipped = blocks.iter().filter(|b| !b.runs).count();
    println!(
        "{}: {} blocks run in {:.0} s, {skipped} marked no-run",
        markdown_path.display(),
        blocks.len() - skipped,
        started.elapsed().as_secs_f64()
    );
    if status.is_some_and(|s| s.success()) {
        return Ok(());
    }
    let progress = std::fs::read_to_string(&progress).unwrap_or_default();
    let where_ = match Failure::locate(&script, &progress) {
        Some(failure) => failure.to_string(),
        None => "before its first block".to_owned(),
    };
    let why = if status.is_none() {
        format!(" (killed after {FILE_TIMEOUT:?})")
    } else {
        String::new()
    };
    let printed = std::fs::read_to_string(&output).unwrap_or_default();
    let tail: Vec<&str> = printed.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "{}: {where_}{why}; last lines printed:\n{}",
        markdown_path.display(),
        tail.join("\n")
    ))
}

/// README.md and docs/*.md, in that order (or those `NURTURE_DOCS` names).
fn documents() -> Vec<PathBuf> {
    let root = project_root();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs folder")
        .map(|e| e.expect("docs entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    let mut all = vec![root.join("README.md")];
    all.extend(docs);
    // NURTURE_DOCS=rollouts runs only the files whose name holds it.
    if let Ok(only) = std::env::var("NURTURE_DOCS") {
        all.retain(|path| path.to_string_lossy().contains(&only));
    }
    all
}

#[test]
fn every_shell_block_in_the_readme_and_docs_runs() {
    let failures: Vec<String> = documents()
        .iter()
        .filter_map(|path| run_file(path, &stable_checkout()).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_broken_block_fails_naming_its_file_and_line() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("broken.md");
    std::fs::write(
        &path,
        "# A page\n\n```sh\nA=1\n```\n\nText.\n\n```sh no-run\nexit 3\n```\n\n```bash\necho \"A is $A\"\nls /no/such/folder\necho never\n```\n",
    )
    .expect("write");
    let checkout = checkout();
    let error = run_file(&path, checkout.path()).expect_err("the broken block fails");
    assert!(
        error.contains("broken.md: the block at line 13 failed at line 15 with status 2"),
        "{error}"
    );
    assert!(error.contains("A is 1"), "blocks share one shell: {error}");
    assert!(!error.contains("never"), "{error}");
}
