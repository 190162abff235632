//! Shell blocks of a Markdown file, and the bash script that runs them.

use std::fmt;

/// Languages whose fenced blocks the harness runs.
const SHELL: &[&str] = &["sh", "bash", "shell"];
/// The word in a fence's info string that keeps a block from running
/// (`` ```sh no-run ``): commands for another machine (Docker, Helm,
/// kubectl), or that never return (`make run`).
pub const NO_RUN: &str = "no-run";
/// The comment that asks for a served registry before a file's blocks run.
pub const SERVE: &str = "<!-- docs-test: serve -->";

/// One fenced shell block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Line of the opening fence (1-based).
    pub line: usize,
    /// The block's text, without its fences.
    pub text: String,
    /// False when the fence carries [`NO_RUN`].
    pub runs: bool,
}

/// A fence that has opened and not yet closed.
struct Open<'a> {
    line: usize,
    indent: usize,
    /// Shell block that runs, shell block marked [`NO_RUN`], or another
    /// language (tracked only so that fences pair up).
    shell: Option<bool>,
    lines: Vec<&'a str>,
}

/// Every fenced shell block of `markdown`, in order. Fences may be indented
/// (inside list items); a block's lines lose that indentation.
pub fn shell_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Open> = None;
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match open.as_mut() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let mut words = info.split_whitespace();
                    let language = words.next().unwrap_or("");
                    let shell = SHELL
                        .contains(&language)
                        .then(|| !words.any(|word| word == NO_RUN));
                    open = Some(Open {
                        line: index + 1,
                        indent,
                        shell,
                        lines: Vec::new(),
                    });
                }
            }
            Some(_) if trimmed.starts_with("```") => {
                let done = open.take().expect("matched Some");
                if let Some(runs) = done.shell {
                    blocks.push(Block {
                        line: done.line,
                        text: done.lines.iter().map(|l| format!("{l}\n")).collect(),
                        runs,
                    });
                }
            }
            Some(block) => block.lines.push(&line[block.indent.min(indent)..]),
        }
    }
    blocks
}

/// Where a documented address points when the harness runs a file.
pub struct Addresses {
    /// Replaces `127.0.0.1:50051`.
    pub grpc: String,
    /// Replaces `127.0.0.1:9090`.
    pub metrics: String,
    /// Replaces `127.0.0.1:8000` (the Open Inference Protocol over HTTP).
    pub http: String,
}

/// A bash script running `blocks` (those that run) in one shell, in order,
/// stopping at the first failure. Before each block it records the block's
/// line in `$DOCS_PROGRESS`; a failing command records `FAILED <script
/// line> <status>` there too, which [`Failure::locate`] maps back to the
/// Markdown file.
pub fn script(blocks: &[Block], addresses: Option<&Addresses>) -> Script {
    let mut text = String::from(
        "set -euo pipefail\n\
         trap 'status=$?; echo \"FAILED $LINENO $status\" >> \"$DOCS_PROGRESS\"' ERR\n",
    );
    let mut starts = Vec::new();
    for block in blocks.iter().filter(|b| b.runs) {
        text.push_str(&format!(
            "echo \"BLOCK {}\" >> \"$DOCS_PROGRESS\"\n",
            block.line
        ));
        let first_line = text.lines().count() + 1;
        starts.push((first_line, block.line));
        let mut body = block.text.clone();
        if let Some(addresses) = addresses {
            body = body
                .replace("127.0.0.1:50051", &addresses.grpc)
                .replace("127.0.0.1:9090", &addresses.metrics)
                .replace("127.0.0.1:8000", &addresses.http);
        }
        text.push_str(&body);
    }
    Script { text, starts }
}

/// A script with, for each block, its first script line and its fence's
/// line in the Markdown file.
pub struct Script {
    /// The bash source.
    pub text: String,
    starts: Vec<(usize, usize)>,
}

/// Where a run stopped.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    /// Line of the failing block's opening fence.
    pub block: usize,
    /// Line of the failing command in the Markdown file, when known.
    pub line: Option<usize>,
    /// Exit status of the failing command, when known.
    pub status: Option<i32>,
}

impl Failure {
    /// Reads the progress file a run of `script` wrote.
    pub fn locate(script: &Script, progress: &str) -> Option<Failure> {
        let mut block = None;
        let mut failed = None;
        for line in progress.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("BLOCK") => block = words.next().and_then(|w| w.parse().ok()),
                Some("FAILED") => {
                    let line: Option<usize> = words.next().and_then(|w| w.parse().ok());
                    let status = words.next().and_then(|w| w.parse().ok());
                    failed.get_or_insert((line, status));
                }
                _ => {}
            }
        }
        let block = block?;
        let (script_line, status) = failed.unwrap_or((None, None));
        let line = script_line.and_then(|script_line| {
            let (first, fence) = script
                .starts
                .iter()
                .rev()
                .find(|(first, _)| *first <= script_line)?;
            Some(fence + 1 + script_line - first)
        });
        Some(Failure {
            block,
            line,
            status,
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the block at line {}", self.block)?;
        if let Some(line) = self.line {
            write!(f, " failed at line {line}")?;
        }
        if let Some(status) = self.status {
            write!(f, " with status {status}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKDOWN: &str = "# Title\n\
\n\
```sh\n\
echo one\n\
```\n\
\n\
```text\n\
not shell\n\
```\n\
\n\
- a list item:\n\
  ```bash\n\
  echo two\n\
  ```\n\
```sh no-run\n\
make run\n\
```\n";

    #[test]
    fn shell_blocks_are_found_with_their_lines_and_markers() {
        let blocks = shell_blocks(MARKDOWN);
        assert_eq!(
            blocks,
            vec![
                Block {
                    line: 3,
                    text: "echo one\n".into(),
                    runs: true
                },
                Block {
                    line: 12,
                    text: "echo two\n".into(),
                    runs: true
                },
                Block {
                    line: 15,
                    text: "make run\n".into(),
                    runs: false
                },
            ]
        );
    }

    #[test]
    fn a_failure_is_located_in_the_markdown_file() {
        let blocks = shell_blocks("```sh\necho a\n```\ntext\n```sh\necho b\nfalse\n```\n");
        let script = script(&blocks, None);
        // The second block starts after the preamble (2 lines), the first
        // block's marker and body (2 lines) and its own marker (1 line).
        let progress = "BLOCK 1\nBLOCK 5\nFAILED 7 1\n";
        assert_eq!(
            Failure::locate(&script, progress),
            Some(Failure {
                block: 5,
                line: Some(7),
                status: Some(1)
            })
        );
    }

    #[test]
    fn documented_addresses_are_pointed_at_the_harness_server() {
        let blocks =
            shell_blocks("```sh\ncurl 127.0.0.1:9090/metrics; g 127.0.0.1:50051 list\n```\n");
        let addresses = Addresses {
            grpc: "127.0.0.1:4000".into(),
            metrics: "127.0.0.1:4001".into(),
            http: "127.0.0.1:4002".into(),
        };
        let script = script(&blocks, Some(&addresses));
        assert!(
            script
                .text
                .contains("curl 127.0.0.1:4001/metrics; g 127.0.0.1:4000 list")
        );
    }
}
