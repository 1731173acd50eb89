//! What passes between the model and the worker, as text: a model's reply
//! split into its reasoning and its python code blocks, and a cell's outcome
//! written as the observation the model reads next. Pure functions, no I/O.

use crate::sandbox::{CellResult, CellStatus};

/// A model reply, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The text outside code blocks (and outside `<think>` sections), trimmed.
    pub reasoning: String,
    /// The python code blocks, in order (fences removed).
    pub code_blocks: Vec<String>,
    /// A fence was opened and never closed (the reply was cut off).
    pub unclosed: bool,
}

/// Fence languages taken as python; a bare fence counts too, since many
/// models leave the tag out. Anything else (`json`, `text`, `output`) is prose.
fn is_python_fence(tag: &str) -> bool {
    matches!(
        tag.trim().to_ascii_lowercase().as_str(),
        "" | "python" | "py" | "python3" | "ipython" | "pycon"
    )
}

/// Remove `<think>…</think>` sections (reasoning models put them in the
/// content): code drafted while thinking is not the answer.
fn without_thinking(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<think>") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</think>") {
            Some(end) => rest = &rest[start + end + "</think>".len()..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

pub fn parse_reply(text: &str) -> Reply {
    let text = without_thinking(text);
    let mut reasoning = String::new();
    let mut code_blocks = Vec::new();
    let mut current: Option<(bool, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        match current.as_mut() {
            None => {
                if let Some(tag) = trimmed.strip_prefix("```") {
                    current = Some((is_python_fence(tag), String::new()));
                } else {
                    reasoning.push_str(line);
                    reasoning.push('\n');
                }
            }
            Some((python, body)) => {
                if trimmed.trim_end() == "```" {
                    if *python {
                        code_blocks.push(body.trim_end().to_string());
                    } else {
                        // Non-python blocks stay in the reasoning, fenced.
                        reasoning.push_str("```\n");
                        reasoning.push_str(body);
                        reasoning.push_str("```\n");
                    }
                    current = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    Reply {
        reasoning: reasoning.trim().to_string(),
        code_blocks: code_blocks
            .into_iter()
            .filter(|c| !c.trim().is_empty())
            .collect(),
        unclosed: current.is_some(),
    }
}

/// At most `limit` characters of `text`: the head and the tail, with what
/// was cut said in between.
pub fn clip(text: &str, limit: usize) -> String {
    let n = text.chars().count();
    if n <= limit {
        return text.to_string();
    }
    let head = limit * 2 / 3;
    let tail = limit - head;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(n - tail).collect();
    format!(
        "{start}\n… [{} characters cut here] …\n{end}",
        n - head - tail
    )
}

/// The observation of one cell, as the next user message: status, stdout,
/// stderr, the trailing value, the traceback, hooks and the submitted
/// answer, each stream clipped to `limit` characters with the cut said.
pub fn observation(cell: &CellResult, limit: usize) -> String {
    let mut out = String::new();
    let status = match cell.status {
        CellStatus::Ok => "ok".to_string(),
        CellStatus::Error => "error".to_string(),
        CellStatus::Timeout => "timeout: the cell ran too long and its worker was killed".into(),
        CellStatus::Oom => "out of memory: the worker was killed".into(),
        CellStatus::Crashed => "crashed: the worker died".into(),
    };
    out.push_str(&format!("Execution status: {status}\n"));
    let stream = |out: &mut String, name: &str, text: &str, cut_bytes: u64| {
        if text.is_empty() && cut_bytes == 0 {
            return;
        }
        out.push_str(&format!("{name}:\n{}\n", clip(text.trim_end(), limit)));
        if cut_bytes > 0 {
            out.push_str(&format!(
                "[{name} truncated by the sandbox: {cut_bytes} more bytes were not kept]\n"
            ));
        }
    };
    stream(&mut out, "stdout", &cell.stdout, cell.stdout_truncated);
    stream(&mut out, "stderr", &cell.stderr, cell.stderr_truncated);
    if let Some(result) = &cell.result {
        out.push_str(&format!("Out: {}\n", clip(result, limit)));
    }
    if let Some(error) = &cell.error {
        let traceback = error.get("traceback").and_then(|t| t.as_str());
        let kind = error
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("error");
        let message = error.get("message").and_then(|t| t.as_str()).unwrap_or("");
        match traceback {
            Some(tb) if !tb.is_empty() => {
                out.push_str(&format!("Traceback:\n{}\n", clip(tb.trim_end(), limit)))
            }
            _ => out.push_str(&format!("{kind}: {}\n", clip(message, limit))),
        }
    }
    if cell.status.lost_worker() {
        out.push_str(
            "The worker is gone: variables from earlier cells are lost. The next cell runs in a fresh worker with `df` reloaded.\n",
        );
    }
    for hook in &cell.hooks {
        let name = hook
            .get("variable_name")
            .and_then(|v| v.as_str())
            .unwrap_or("value");
        let value = hook.get("value").map(|v| v.to_string()).unwrap_or_default();
        out.push_str(&format!("hook {name} = {}\n", clip(&value, 300)));
    }
    if let Some(value) = cell.submitted.as_ref().and_then(|s| s.get("value")) {
        out.push_str(&format!(
            "Submitted answer: {}\n",
            clip(&value.to_string(), limit)
        ));
    }
    out.trim_end().to_string()
}

/// A line diff from `old` to `new` (unified style, no context limits):
/// `-` removed lines, `+` added lines, ` ` kept ones. Small cells, so the
/// quadratic longest-common-subsequence table is fine.
pub fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let (n, m) = (a.len(), b.len());
    if n * m > 4_000_000 {
        return format!("--- {n} lines\n+++ {m} lines (too large to diff)\n");
    }
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push_str(&format!(" {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] > lcs[i + 1][j]) {
            out.push_str(&format!("+{}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("-{}\n", a[i]));
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_python_block_and_its_reasoning() {
        let r = parse_reply("I will count rows.\n```python\nn = len(df)\nprint(n)\n```\nDone.");
        assert_eq!(r.code_blocks, vec!["n = len(df)\nprint(n)".to_string()]);
        assert_eq!(r.reasoning, "I will count rows.\nDone.");
        assert!(!r.unclosed);
    }

    #[test]
    fn bare_fences_count_and_json_does_not() {
        let r = parse_reply("```\nx = 1\n```\n```json\n{\"a\": 1}\n```");
        assert_eq!(r.code_blocks, vec!["x = 1".to_string()]);
        assert!(r.reasoning.contains("{\"a\": 1}"));
    }

    #[test]
    fn thinking_sections_and_cut_replies() {
        let r = parse_reply("<think>```python\nwrong()\n```</think>Now:\n```py\nright()\n```");
        assert_eq!(r.code_blocks, vec!["right()".to_string()]);
        let r = parse_reply("Let me\n```python\ndf.head(");
        assert!(r.code_blocks.is_empty());
        assert!(r.unclosed);
        let r = parse_reply("no code here");
        assert!(r.code_blocks.is_empty() && !r.unclosed);
        let r = parse_reply("```python\na=1\n```\n```python\nb=2\n```");
        assert_eq!(r.code_blocks.len(), 2);
    }

    #[test]
    fn clipping_says_what_was_cut() {
        let long = "x".repeat(1000);
        let c = clip(&long, 100);
        assert!(c.contains("[900 characters cut here]"), "{c}");
        assert_eq!(clip("short", 100), "short");
    }

    #[test]
    fn diffs_show_changed_lines() {
        let d = line_diff("a = df['x']\nprint(a)", "a = df['X']\nprint(a)");
        assert_eq!(d, "-a = df['x']\n+a = df['X']\n print(a)\n");
    }
}
