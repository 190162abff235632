//! `nurturectl` as operators run it: real processes against a `file://`
//! registry and the real S3-compatible server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nurture_models::ModelKind;
use nurture_tests::fixtures::{self, Tabular};
use nurture_tests::s3::TestS3;
use serde_json::Value;
use tempfile::TempDir;

/// Runs `nurturectl` against one registry.
struct Ctl {
    url: String,
    env: Vec<(&'static str, String)>,
    files: TempDir,
    _registry_dir: Option<TempDir>,
}

impl Ctl {
    fn file() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        Ctl {
            url,
            env: Vec::new(),
            files: tempfile::tempdir().unwrap(),
            _registry_dir: Some(dir),
        }
    }

    fn s3() -> Self {
        let s3 = TestS3::from_env();
        let (url, env) = s3.url_and_env(&TestS3::unique_prefix("cli"));
        Ctl {
            url,
            env,
            files: tempfile::tempdir().unwrap(),
            _registry_dir: None,
        }
    }

    fn registry_dir(&self) -> Option<&Path> {
        self._registry_dir.as_ref().map(TempDir::path)
    }

    fn command(&self, actor: &str, args: &[&str]) -> Command {
        let mut command = Command::new(nurture_tests::binary("nurturectl"));
        command
            .args(args)
            .env("NURTURE_REGISTRY", &self.url)
            .env("NURTURE_ACTOR", actor)
            .env_remove("ORT_DYLIB_PATH")
            .current_dir(nurture_tests::project_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command("tester", args).output().unwrap()
    }

    /// Runs and expects exit code 0; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "nurturectl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    fn write(&self, file: &str, bytes: &[u8]) -> PathBuf {
        let path = self.files.path().join(file);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn publish_churn(&self, seed: u64, extra: &[&str]) -> u64 {
        let width = ModelKind::Churn.allowed_features().len();
        let path = self.write(
            &format!("churn-{seed}.onnx"),
            &Tabular::new(width, 2, seed).build(),
        );
        let mut args = vec!["--json", "publish", "churn", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out: Value = serde_json::from_str(&self.ok(&args)).unwrap();
        out["manifest"]["version"].as_u64().unwrap()
    }
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("nurturectl exits normally")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every file under `dir` with its bytes.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

/// Several processes promote with `--expect-seq` at the same moment: exactly
/// one exits 0, every other exits 3, and the log has one new event, the
/// winner's, with no gap.
fn race(ctl: &Ctl) {
    ctl.publish_churn(1, &["--promote"]);
    ctl.publish_churn(2, &[]);
    let seq = ctl.json(&["status", "churn"])["seq"].as_u64().unwrap();
    let expect = seq.to_string();

    let racers = 6;
    let children: Vec<_> = (0..racers)
        .map(|racer| {
            let args = ["promote", "churn", "2", "--expect-seq", expect.as_str()];
            ctl.command(&format!("racer-{racer}"), &args)
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect();

    let winners: Vec<usize> = (0..racers).filter(|i| code(&outputs[*i]) == 0).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one racer wins: {:?}",
        outputs.iter().map(stderr).collect::<Vec<_>>()
    );
    for (racer, output) in outputs.iter().enumerate() {
        if racer != winners[0] {
            assert_eq!(code(output), 3, "racer {racer}: {}", stderr(output));
            assert!(stderr(output).contains("conflict"), "{}", stderr(output));
        }
    }
    let history = ctl.json(&["history", "churn"]);
    let events = history["events"].as_array().unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seq + 1).collect::<Vec<_>>(),
        "no gap, one new event"
    );
    let last = events.last().unwrap();
    assert_eq!(
        last["actor"],
        format!("racer-{}", winners[0]),
        "the winner's event is stored"
    );
    assert_eq!(last["type"], "promoted");
}

/// The 3 a.m. story: roll back, see why, refuse to re-promote without force.
fn rollback_story(ctl: &Ctl) {
    ctl.publish_churn(1, &["--promote"]);
    ctl.publish_churn(2, &["--promote"]);
    assert!(
        ctl.ok(&["rollback", "churn", "--reason", "p99 doubled"])
            .contains("2 -> 1")
    );

    let status = ctl.json(&["status", "churn"]);
    assert_eq!(status["live"], 1);
    assert_eq!(status["versions"]["2"]["revoked"]["reason"], "p99 doubled");
    let human = ctl.ok(&["status", "churn"]);
    assert!(
        human.contains("live      1")
            && human.contains("revoked   2")
            && human.contains("p99 doubled"),
        "{human}"
    );

    let refused = ctl.run(&["promote", "churn", "2"]);
    assert_eq!(code(&refused), 1);
    let message = stderr(&refused);
    assert!(
        message.contains("rolled back")
            && message.contains("p99 doubled")
            && message.contains("--force"),
        "{message}"
    );

    ctl.ok(&["promote", "churn", "2", "--force"]);
    let history = ctl.json(&["history", "churn"]);
    let last = history["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["type"], "promoted");
    assert_eq!(last["forced"], true);
    assert_eq!(ctl.json(&["status", "churn"])["live"], 2);

    let versions = ctl.ok(&["versions", "churn"]);
    assert!(
        versions.lines().next().unwrap().starts_with("VERSION"),
        "{versions}"
    );
    let table = ctl.ok(&["history", "churn"]);
    assert!(
        table.contains("rolled_back") && table.contains("(forced)"),
        "{table}"
    );
}

#[test]
fn file_racing_processes_exactly_one_wins() {
    race(&Ctl::file());
}

#[test]
fn s3_racing_processes_exactly_one_wins() {
    race(&Ctl::s3());
}

#[test]
fn file_rollback_story() {
    rollback_story(&Ctl::file());
}

#[test]
fn s3_rollback_story() {
    rollback_story(&Ctl::s3());
}

#[test]
fn bad_input_exits_nonzero_and_writes_nothing() {
    let ctl = Ctl::file();
    ctl.publish_churn(1, &["--promote"]);
    let dir = ctl.registry_dir().unwrap().to_path_buf();
    let before = tree(&dir);

    let model = ctl.write(
        "m.onnx",
        &Tabular::new(ModelKind::Churn.allowed_features().len(), 2, 5).build(),
    );
    let model = model.to_str().unwrap();
    let junk = ctl.write("junk.onnx", b"\x08\x07garbage");
    let manifest = ctl.write(
        "manifest.json",
        br#"{"features": ["email_open_rate", "zodiac_sign"]}"#,
    );
    let emotion = ctl.write("emotion.onnx", &fixtures::emotion(3));

    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["publish", "churn", model, "--name", "team/churn"],
            1,
            "path separators",
        ),
        (
            vec!["publish", "churn", model, "--name", ".."],
            1,
            "invalid name",
        ),
        (
            vec!["publish", "churn", junk.to_str().unwrap()],
            1,
            "cannot load",
        ),
        (
            vec![
                "publish",
                "churn",
                model,
                "--manifest",
                manifest.to_str().unwrap(),
            ],
            1,
            "zodiac_sign",
        ),
        (
            vec!["publish", "churn", emotion.to_str().unwrap()],
            1,
            "expected \"features\"",
        ),
        (
            vec!["publish", "churn", "/nonexistent/model.onnx"],
            1,
            "cannot read",
        ),
        (vec!["publish", "sentiment", model], 2, "unknown model kind"),
        (vec!["rollback", "churn"], 2, "--reason"),
        (vec!["canary", "churn", "1", "--percent", "0"], 2, "percent"),
        (vec!["promote", "churn", "9"], 1, "not found"),
        (vec!["status", "nosuchmodel"], 1, "not found"),
    ];
    for (args, expected_code, expected_message) in cases {
        let output = ctl.run(&args);
        assert_eq!(
            code(&output),
            expected_code,
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected_message),
            "{args:?}: {}",
            stderr(&output)
        );
        assert_eq!(tree(&dir), before, "{args:?} changed the registry");
    }
}

#[test]
fn missing_onnx_runtime_names_both_places() {
    let ctl = Ctl::file();
    let model = ctl.write(
        "m.onnx",
        &Tabular::new(ModelKind::Churn.allowed_features().len(), 2, 5).build(),
    );
    let output = ctl
        .command("tester", &["publish", "churn", model.to_str().unwrap()])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert_eq!(code(&output), 1);
    let message = stderr(&output);
    assert!(
        message.contains("ORT_DYLIB_PATH") && message.contains(".ort/"),
        "{message}"
    );
}

#[test]
fn show_and_diff_two_versions() {
    let ctl = Ctl::file();
    ctl.publish_churn(1, &["--promote"]);
    ctl.publish_churn(2, &[]);
    let shown = ctl.ok(&["show", "churn", "1"]);
    for expected in [
        "version    1 (live)",
        "features   20",
        "labels     [\"retained\", \"churned\"]",
        // Published without thresholds: the serving defaults.
        "risk       thresholds 0.100 0.250 0.500 0.750",
        "reference  none",
    ] {
        assert!(shown.contains(expected), "{expected} in\n{shown}");
    }
    let manifest = ctl.json(&["show", "churn", "2"]);
    assert_eq!(manifest["state"], "available");
    assert_eq!(manifest["manifest"]["version"], 2);

    let differences = ctl.ok(&["diff", "churn", "1", "2"]);
    assert!(differences.starts_with("sha256     1: "), "{differences}");
    assert!(
        !differences.contains("features"),
        "same features: {differences}"
    );
    let json = ctl.json(&["diff", "churn", "1", "2"]);
    assert_eq!(json["same_bytes"], false);
    assert!(
        ctl.ok(&["diff", "churn", "2", "2"])
            .contains("versions 2 and 2 have the same manifest")
    );
    assert_ne!(code(&ctl.run(&["show", "churn", "9"])), 0);
}

#[test]
fn ls_versions_fetch_and_canary() {
    let ctl = Ctl::file();
    ctl.publish_churn(1, &["--promote"]);
    ctl.publish_churn(2, &[]);
    let emotion = ctl.write("emotion.onnx", &fixtures::emotion(1));
    ctl.ok(&["publish", "emotion", emotion.to_str().unwrap(), "--promote"]);

    ctl.ok(&["canary", "churn", "2", "--percent", "10"]);
    let models = ctl.json(&["ls"]);
    let models = models["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["name"], "churn");
    assert_eq!(models[0]["canary"]["version"], 2);
    assert_eq!(models[0]["canary"]["percent"], 10);
    assert_eq!(models[1]["kind"], "emotion");

    let versions = ctl.json(&["versions", "churn"]);
    let states: Vec<&str> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["live", "canary"]);

    assert!(
        ctl.ok(&["canary-clear", "churn"])
            .contains("canary_cleared")
    );
    assert!(
        ctl.ok(&["canary-clear", "churn"])
            .contains("nothing written")
    );

    let out = ctl.files.path().join("fetched.onnx");
    ctl.ok(&["fetch", "churn", "2", "--out", out.to_str().unwrap()]);
    let fetched = std::fs::read(&out).unwrap();
    assert_eq!(
        fetched,
        std::fs::read(ctl.files.path().join("churn-2.onnx")).unwrap()
    );
}

#[test]
fn a_guarded_rollout_is_a_release_log_event_and_shows_in_ls() {
    let ctl = Ctl::file();
    ctl.publish_churn(1, &["--promote"]);
    ctl.publish_churn(2, &[]);
    let seq = |ctl: &Ctl| ctl.json(&["ls"])["models"][0]["seq"].as_u64().unwrap();
    let before = seq(&ctl);

    // A bad policy names its field and writes nothing.
    let output = ctl.run(&["rollout", "churn", "2", "--steps", "50,25"]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert!(stderr(&output).contains("steps[1]"), "{}", stderr(&output));
    assert_eq!(seq(&ctl), before);

    let started = ctl.ok(&[
        "rollout",
        "churn",
        "2",
        "--steps",
        "5,25,50",
        "--max-duration",
        "2h",
    ]);
    assert!(started.contains("rollout_started"), "{started}");
    let churn = ctl.json(&["ls"])["models"][0].clone();
    assert_eq!(churn["canary"]["version"], 2);
    assert_eq!(churn["canary"]["percent"], 5);
    assert_eq!(churn["rollout"]["version"], 2);
    assert_eq!(
        churn["rollout"]["policy"]["steps"],
        serde_json::json!([5, 25, 50])
    );
    assert_eq!(churn["rollout"]["policy"]["max_duration_secs"], 7200);
    assert_eq!(churn["rollout"]["policy"]["metric"], "error_rate");

    let stopped = ctl.ok(&["rollout-stop", "churn", "--reason", "checking by hand"]);
    assert!(
        stopped.contains("rollout_decided") && stopped.contains("stopped: checking by hand"),
        "{stopped}"
    );
    let churn = ctl.json(&["ls"])["models"][0].clone();
    assert!(churn["rollout"].is_null());
    assert_eq!(churn["canary"]["version"], 2, "stopping keeps the canary");
    assert_eq!(
        code(&ctl.run(&["rollout-stop", "churn", "--reason", "again"])),
        1
    );

    // The same bytes again are version 2: nothing written.
    let after = seq(&ctl);
    let path = ctl.files.path().join("churn-2.onnx");
    let again = ctl.json(&["publish", "churn", path.to_str().unwrap()]);
    assert_eq!(again["created"], false);
    assert_eq!(again["manifest"]["version"], 2);
    assert_eq!(seq(&ctl), after);
}

/// A registry named as a bare folder is that folder; a folder that does not
/// exist is named (and not created) by a reader; an empty registry is said
/// to be empty; a mistyped URL gets a hint.
#[test]
fn registry_mistakes_are_named_and_bare_folders_work() {
    let ctl = Ctl::file();
    let folder = ctl.registry_dir().unwrap().to_str().unwrap().to_owned();
    let mut bare = Ctl::file();
    bare.url = folder.clone();

    let empty = bare.run(&["ls"]);
    assert!(empty.status.success(), "{}", stderr(&empty));
    assert!(
        stderr(&empty).contains("holds no models"),
        "{}",
        stderr(&empty)
    );

    let version = bare.publish_churn(1, &[]);
    assert_eq!(version, 1);
    // The same folder through file:// sees it.
    assert_eq!(ctl.json(&["ls"])["models"][0]["name"], "churn");

    let mut missing = Ctl::file();
    let gone = ctl.files.path().join("no-such-registry");
    missing.url = gone.to_str().unwrap().to_owned();
    let output = missing.run(&["ls"]);
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("does not exist") && stderr(&output).contains("no-such-registry"),
        "{}",
        stderr(&output)
    );
    assert!(!gone.exists(), "a reader must not create the folder");

    missing.url = "s3:/bucket".into();
    let output = missing.run(&["ls"]);
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("use file://PATH"),
        "{}",
        stderr(&output)
    );
}

/// Publishing without risk thresholds or feature means warns of what
/// serving fills in or leaves out, and `show` lists it; bash completions
/// print.
#[test]
fn serving_defaults_are_warned_and_shown_and_completions_print() {
    let ctl = Ctl::file();
    let width = ModelKind::Churn.allowed_features().len();
    let path = ctl.write("churn.onnx", &Tabular::new(width, 2, 3).build());
    let output = ctl.run(&["publish", "churn", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let warnings = stderr(&output);
    assert!(
        warnings.contains("warning: risk_thresholds not given")
            && warnings.contains("warning: feature_means not given"),
        "{warnings}"
    );
    let shown = ctl.ok(&["show", "churn", "1"]);
    assert!(
        shown.contains("default    risk_thresholds not given: the defaults"),
        "{shown}"
    );
    assert_eq!(
        ctl.json(&["show", "churn", "1"])["serving_defaults"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // With both given, nothing is warned.
    let manifest = ctl.write(
        "m.json",
        serde_json::json!({
            "risk_thresholds": [0.2, 0.4, 0.6, 0.8],
            "feature_means": { "budget_k_usd": 400.0 }
        })
        .to_string()
        .as_bytes(),
    );
    let path = ctl.write("churn2.onnx", &Tabular::new(width, 2, 4).build());
    let output = ctl.run(&[
        "publish",
        "churn",
        path.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("warning"), "{}", stderr(&output));

    let completions = ctl.ok(&["completions", "bash"]);
    assert!(
        completions.contains("_nurturectl") && completions.contains("rollout-wait"),
        "{}",
        &completions[..200.min(completions.len())]
    );
}
