//! `nurture-trainer` as ML engineers run it: generate, train, publish,
//! promote behind the quality gate, and refuse bad data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

struct Trainer {
    dir: TempDir,
}

impl Trainer {
    fn new() -> Self {
        Trainer {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn registry(&self) -> String {
        format!("file://{}", self.path("registry").display())
    }

    fn command(&self, binary: &str, args: &[&str]) -> Command {
        let mut command = Command::new(nurture_tests::binary(binary));
        command
            .args(args)
            .env("NURTURE_REGISTRY", self.registry())
            .env("NURTURE_ACTOR", "ml-engineer")
            .env_remove("ORT_DYLIB_PATH")
            .current_dir(nurture_tests::project_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn run(&self, binary: &str, args: &[&str]) -> Output {
        self.command(binary, args).output().unwrap()
    }

    fn ok(&self, binary: &str, args: &[&str]) -> String {
        let output = self.run(binary, args);
        assert!(
            output.status.success(),
            "{binary} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn generate(&self, rows: usize) -> PathBuf {
        let data = self.path("data");
        self.ok(
            "nurture-trainer",
            &[
                "generate",
                "--out",
                data.to_str().unwrap(),
                "--rows",
                &rows.to_string(),
            ],
        );
        data
    }

    fn train_json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["--json", "train"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok("nurture-trainer", &all)).unwrap()
    }
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn trains_publishes_and_promotes_every_kind() {
    let trainer = Trainer::new();
    let data = trainer.generate(1_500);
    let out = trainer.path("artifacts");
    let reports = trainer.train_json(&[
        "all",
        "--data",
        data.to_str().unwrap(),
        "--promote",
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(reports.len(), 5);
    for report in &reports {
        let kind = report["kind"].as_str().unwrap();
        assert!(
            report["parity_max_diff"].as_f64().unwrap() <= 1e-4,
            "{kind}"
        );
        assert_eq!(report["published_version"], 1, "{kind}");
        assert_eq!(report["promoted"], true, "{kind}");
        let metric = if kind == "emotion" || kind == "journey" {
            "macro_f1"
        } else {
            "auc"
        };
        let score = report["metrics"][metric].as_f64().unwrap();
        // Most of what the data allows, on every kind, even with small data:
        // at least half the way from chance to the Bayes rate (the
        // generator's best possible score).
        let chance = if metric == "auc" {
            0.5
        } else {
            1.0 / if kind == "emotion" { 10.0 } else { 5.0 }
        };
        let best = report["bayes"]["metrics"][metric]
            .as_f64()
            .unwrap_or_else(|| panic!("{kind}: Bayes rate reported"));
        assert!(
            score > chance + 0.5 * (best - chance),
            "{kind}: {metric} = {score}, chance {chance}, best possible {best}"
        );
    }

    // The registry holds all five, live, with the trainer's manifest.
    let models: Value = serde_json::from_str(&trainer.ok("nurturectl", &["--json", "ls"])).unwrap();
    let models = models["models"].as_array().unwrap();
    assert_eq!(models.len(), 5);
    assert!(models.iter().all(|m| m["live"] == 1));
    let versions: Value =
        serde_json::from_str(&trainer.ok("nurturectl", &["--json", "versions", "churn"])).unwrap();
    assert!(versions["versions"][0]["metrics"]["auc"].as_f64().is_some());

    // The exported files are ordinary ONNX: nurturectl publishes them too.
    for kind in ["churn", "emotion"] {
        let model = out.join(format!("{kind}.onnx"));
        let manifest = out.join(format!("{kind}.manifest.json"));
        let published: Value = serde_json::from_str(&trainer.ok(
            "nurturectl",
            &[
                "--json",
                "publish",
                kind,
                model.to_str().unwrap(),
                "--manifest",
                manifest.to_str().unwrap(),
            ],
        ))
        .unwrap();
        // The trainer published these very bytes as version 1: publishing
        // them again is that version, and nothing is written.
        assert_eq!(published["manifest"]["version"], 1);
        assert_eq!(published["created"], false);
        let stored = &published["manifest"];
        assert_eq!(stored["golden"].as_array().unwrap().len(), 5);
        if kind == "churn" {
            let thresholds: Vec<f64> = stored["risk_thresholds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_f64().unwrap())
                .collect();
            assert!(thresholds.windows(2).all(|w| w[0] < w[1]), "{thresholds:?}");
            assert_eq!(stored["feature_means"].as_object().unwrap().len(), 20);
        }
    }
}

#[test]
fn the_same_data_and_seed_give_identical_onnx() {
    let trainer = Trainer::new();
    let data = trainer.generate(600);
    let sha = |kind: &str, seed: &str| -> String {
        let file = data.join(format!("{kind}.csv"));
        let reports = trainer.train_json(&[kind, "--data", file.to_str().unwrap(), "--seed", seed]);
        reports[0]["sha256"].as_str().unwrap().to_owned()
    };
    for kind in ["churn", "journey", "emotion"] {
        assert_eq!(sha(kind, "7"), sha(kind, "7"), "{kind}");
    }
}

#[test]
fn the_quality_gate_refuses_a_worse_model_unless_forced() {
    let trainer = Trainer::new();
    let data = trainer.generate(3_000);
    let churn = data.join("churn.csv");
    let churn = churn.to_str().unwrap();
    trainer.train_json(&["churn", "--data", churn, "--promote"]);

    // One weak feature: clearly worse on the same holdout.
    let output = trainer.run(
        "nurture-trainer",
        &[
            "train",
            "churn",
            "--data",
            churn,
            "--features",
            "budget_k_usd",
            "--promote",
        ],
    );
    assert_eq!(code(&output), 1);
    let message = stderr(&output);
    assert!(
        message.contains("quality gate")
            && message.contains("published but not promoted")
            && message.contains("--force"),
        "{message}"
    );
    let status: Value =
        serde_json::from_str(&trainer.ok("nurturectl", &["--json", "status", "churn"])).unwrap();
    assert_eq!(status["live"], 1);
    assert!(
        status["versions"]["2"].is_object(),
        "the refused version is still published"
    );

    let forced = trainer.train_json(&[
        "churn",
        "--data",
        churn,
        "--features",
        "budget_k_usd",
        "--promote",
        "--force",
    ]);
    assert_eq!(forced[0]["gate"]["forced"], true);
    assert_eq!(forced[0]["promoted"], true);
    let status: Value =
        serde_json::from_str(&trainer.ok("nurturectl", &["--json", "status", "churn"])).unwrap();
    // The same data and options give the same bytes: the forced run's
    // model is version 2 itself, now promoted past the gate.
    assert_eq!(status["live"], 2);
    assert_eq!(status["versions"].as_object().unwrap().len(), 2);
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn bad_data_is_named_by_line_and_column_and_publishes_nothing() {
    let trainer = Trainer::new();
    let data = trainer.generate(200);
    let good = std::fs::read_to_string(data.join("churn.csv")).unwrap();
    let lines: Vec<String> = good.lines().map(str::to_owned).collect();
    let header = lines[0].clone();
    let bad_dir = trainer.path("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();

    let replace_field = |line: usize, column: usize, value: &str| -> String {
        let mut rows = lines.clone();
        let mut fields: Vec<String> = rows[line - 1].split(',').map(str::to_owned).collect();
        fields[column] = value.to_owned();
        rows[line - 1] = fields.join(",");
        rows.join("\n")
    };
    let without_column = lines
        .iter()
        .map(|l| l.rsplit_once(',').unwrap().0.to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    let extra_column = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("{l},shoe_size")
            } else {
                format!("{l},42")
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let single_class = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.clone()
            } else {
                format!("{},0", l.rsplit_once(',').unwrap().0)
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "missing column",
            without_column,
            "line 1, column churned",
            "missing column",
        ),
        (
            "extra column",
            extra_column,
            "column shoe_size",
            "unexpected column",
        ),
        (
            "non-numeric",
            replace_field(5, 4, "often"),
            "line 5, column email_open_rate",
            "not a number",
        ),
        (
            "NaN",
            replace_field(7, 12, "NaN"),
            "line 7, column sentiment_score",
            "not a finite value",
        ),
        (
            "negative count",
            replace_field(8, 9, "-3"),
            "line 8, column messages_sent_30d",
            ">= 0",
        ),
        (
            "label outside the set",
            replace_field(9, 21, "maybe"),
            "line 9, column churned",
            "is not one of 0, 1",
        ),
        ("empty file", String::new(), "churn.csv", "empty"),
        ("header only", header.clone(), "churn.csv", "no rows"),
        (
            "single class",
            single_class,
            "column churned",
            "at least two classes",
        ),
    ];
    for (case, contents, location, reason) in cases {
        let file = write(&bad_dir, "churn.csv", &contents);
        let output = trainer.run(
            "nurture-trainer",
            &[
                "train",
                "churn",
                "--data",
                file.to_str().unwrap(),
                "--promote",
            ],
        );
        assert_eq!(code(&output), 1, "{case}");
        let message = stderr(&output);
        assert!(
            message.contains(location) && message.contains(reason),
            "{case}: {message}"
        );
        assert!(
            !trainer.path("registry").join("models").exists(),
            "{case}: something was published"
        );
    }
    let unknown = trainer.run(
        "nurture-trainer",
        &[
            "train",
            "churn",
            "--data",
            data.join("churn.csv").to_str().unwrap(),
            "--features",
            "shoe_size",
        ],
    );
    assert_eq!(code(&unknown), 1);
    assert!(
        stderr(&unknown).contains("shoe_size"),
        "{}",
        stderr(&unknown)
    );
}

/// Real data in: a CSV holding 6 of the 20 churn features in shuffled
/// order (no lead_id, flags and labels as true/false), and a Parquet file
/// written by DuckDB, each train a model that publishes and serves; bad
/// files are named by row and column, or as an unsupported format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_parquet_with_any_columns_train_models_that_serve() {
    let trainer = Trainer::new();
    let data = trainer.generate(3000);
    let full = std::fs::read_to_string(data.join("churn.csv")).unwrap();
    let mut lines = full.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let pick = [
        "churned",
        "sentiment_score",
        "pre_approved",
        "days_since_last_reply",
        "complaints_90d",
        "email_open_rate",
        "budget_k_usd",
    ];
    let columns: Vec<usize> = pick
        .iter()
        .map(|name| header.iter().position(|h| h == name).unwrap())
        .collect();
    let as_flag = |name: &str, cell: &str| match (name, cell) {
        ("churned" | "pre_approved", "1") => "true".to_owned(),
        ("churned" | "pre_approved", "0") => "false".to_owned(),
        _ => cell.to_owned(),
    };
    let mut csv = vec![pick.join(",")];
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        csv.push(
            pick.iter()
                .zip(&columns)
                .map(|(name, column)| as_flag(name, cells[*column]))
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    std::fs::create_dir_all(trainer.path("real")).unwrap();
    std::fs::create_dir_all(trainer.path("bad")).unwrap();
    let subset = write(&trainer.path("real"), "leads.csv", &(csv.join("\n") + "\n"));
    let report = trainer.train_json(&["churn", "--data", subset.to_str().unwrap(), "--promote"]);
    assert_eq!(report[0]["published_version"], 1, "{report:?}");
    let manifest: Value =
        serde_json::from_str(&trainer.ok("nurturectl", &["--json", "show", "churn", "1"])).unwrap();
    let features = manifest["manifest"]["features"].as_array().unwrap().len();
    assert_eq!(features, 6, "{manifest}");

    // The same rows as Parquet, written by DuckDB, with all 20 features.
    let parquet = trainer.path("real/leads.parquet");
    let python = nurture_tests::project_root().join(".tools/analysis-venv/bin/python");
    let wrote = Command::new(&python)
        .arg("-c")
        .arg(format!(
            "import duckdb; duckdb.sql(\"COPY (SELECT * FROM read_csv('{}')) TO '{}' (FORMAT parquet)\")",
            data.join("churn.csv").display(),
            parquet.display()
        ))
        .output()
        .unwrap();
    assert!(
        wrote.status.success(),
        "{}",
        String::from_utf8_lossy(&wrote.stderr)
    );
    let report = trainer.train_json(&["churn", "--data", parquet.to_str().unwrap(), "--publish"]);
    assert_eq!(report[0]["published_version"], 2, "{report:?}");

    // Both serve.
    let server = nurture_tests::server::ServerProcess::start(
        &trainer.registry(),
        &trainer.path("cache"),
        &["--models", "churn", "--poll-interval", "200ms"],
    );
    let mut churn =
        nurture_proto::v1::churn_service_client::ChurnServiceClient::new(server.channel().await);
    for pin in [0, 2] {
        let mut version = 0;
        nurture_tests::eventually(
            "churn answers",
            std::time::Duration::from_secs(30),
            async || match nurture_tests::server::churn_version_of(
                &mut churn,
                nurture_tests::fixtures::lead_profile("lead-7"),
                pin,
            )
            .await
            {
                Ok(answered) => {
                    version = answered;
                    true
                }
                Err(_) => false,
            },
        )
        .await;
        assert_eq!(version, if pin == 0 { 1 } else { 2 });
    }

    // Bad files: a missing value, an unknown format.
    let mut holes = csv.clone();
    let cells: Vec<&str> = csv[4].split(',').collect();
    holes[4] = format!("{},,{}", cells[0], cells[2..].join(","));
    let file = write(&trainer.path("bad"), "holes.csv", &holes.join("\n"));
    let output = trainer.run(
        "nurture-trainer",
        &["train", "churn", "--data", file.to_str().unwrap()],
    );
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("line 5, column sentiment_score")
            && stderr(&output).contains("is empty"),
        "{}",
        stderr(&output)
    );
    let file = write(&trainer.path("bad"), "leads.xlsx", "not a table");
    let output = trainer.run(
        "nurture-trainer",
        &["train", "churn", "--data", file.to_str().unwrap()],
    );
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("unsupported format \"xlsx\""),
        "{}",
        stderr(&output)
    );
}

/// A few hundred rows: the holdout measures a model fit on the training
/// split with iterations chosen by cross-validation, and the published model
/// is fit again on every row; `--refit never` publishes the training-split
/// model. Both are deterministic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_data_is_refit_on_every_row_with_iterations_chosen_by_cross_validation() {
    let trainer = Trainer::new();
    let data = trainer.generate(400);
    let churn = data.join("churn.csv");
    let churn = churn.to_str().unwrap();
    let out = trainer.path("out");
    let out = out.to_str().unwrap();

    let refit = &trainer.train_json(&["churn", "--data", churn, "--out-dir", out])[0];
    let rows = refit["train_rows"].as_u64().unwrap() + refit["holdout_rows"].as_u64().unwrap();
    assert_eq!(rows, 400, "{refit}");
    assert_eq!(refit["refit"]["rows"], 400, "{refit}");
    let iterations = refit["refit"]["iterations"].as_u64().unwrap();
    assert!((1..=100).contains(&iterations), "{refit}");
    assert!(
        refit["refit"]["chosen_by"]
            .as_str()
            .unwrap()
            .contains("cross-validation"),
        "{refit}"
    );
    assert!(
        refit["model_summary"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{iterations} iterations")),
        "{refit}"
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(trainer.path("out/churn.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["metrics"]["fit_rows"], 400.0, "{manifest}");

    let kept = &trainer.train_json(&["churn", "--data", churn, "--refit", "never"])[0];
    assert!(kept["refit"].is_null(), "{kept}");
    assert_eq!(
        kept["metrics"]["fit_rows"],
        kept["train_rows"].as_f64().unwrap()
    );
    assert!(
        kept["model_summary"]
            .as_str()
            .unwrap()
            .starts_with("100 iterations"),
        "below 10,000 rows the training-split model runs every iteration: {kept}"
    );
    assert_ne!(kept["sha256"], refit["sha256"]);

    let again = &trainer.train_json(&["churn", "--data", churn])[0];
    assert_eq!(
        again["sha256"], refit["sha256"],
        "same data, same seed, same ONNX"
    );
}
