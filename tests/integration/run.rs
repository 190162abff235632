//! `make run` (scripts/run.sh) as a newcomer runs it: it trains into an
//! empty registry, starts the server, and the example calls it prints work.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn make_run_answers_its_printed_example_calls() {
    let var = tempfile::tempdir().unwrap();
    let bin_dir = nurture_tests::binary("nurture-server")
        .parent()
        .unwrap()
        .to_path_buf();
    let mut child = Command::new(nurture_tests::project_root().join("scripts/run.sh"))
        .env("NURTURE_VAR", var.path())
        .env("NURTURE_LISTEN", "127.0.0.1:0")
        .env("NURTURE_METRICS_LISTEN", "127.0.0.1:0")
        .env("NURTURE_HTTP_LISTEN", "127.0.0.1:0")
        .env("NURTURE_RUN_ROWS", "1500")
        .env("NURTURE_SKIP_BUILD", "1")
        .env("NURTURE_BIN_DIR", &bin_dir)
        .env_remove("ORT_DYLIB_PATH")
        .current_dir(nurture_tests::project_root())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let group = child.id();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut examples = Vec::new();
    let mut http_examples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let line = receiver
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("run.sh printed its examples in time");
        if line.starts_with("== end of examples") {
            break;
        }
        if line.contains("grpcurl -plaintext") {
            examples.push(line);
        } else if line.starts_with("curl ") {
            http_examples.push(line);
        }
    }
    assert_eq!(examples.len(), 6, "{examples:?}");
    // The HTTP binding's examples: metadata naming the features, and an
    // answer with probabilities.
    assert_eq!(http_examples.len(), 2, "{http_examples:?}");
    for (example, expected) in http_examples
        .iter()
        .zip(["budget_k_usd", "\"probabilities\""])
    {
        let stdout = run_example(example);
        assert!(stdout.contains(expected), "{example}\n{stdout}");
    }
    for example in &examples {
        let stdout = run_example(example);
        let expected = [
            "\"SERVING\"",
            "\"liveVersion\"",
            "\"dominant\"",
            "\"churnProbability\"",
            "\"stage\"",
            "\"responseProbability\"",
        ];
        assert!(
            expected.iter().any(|e| stdout.contains(e)),
            "{example}\n{stdout}"
        );
        assert!(!stdout.contains("\"liveVersion\": \"0\""));
    }
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{group}")])
        .status();
    let stopped = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if stopped.elapsed() > Duration::from_secs(20) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
            let _ = child.wait();
            panic!("run.sh did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs one printed example with bash; panics with its output unless it
/// succeeds; returns its stdout.
fn run_example(example: &str) -> String {
    let output = Command::new("bash")
        .arg("-c")
        .arg(example)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{example}\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
