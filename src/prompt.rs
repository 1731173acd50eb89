//! Prompts as data: text files embedded at build time, each declaring the
//! `{{name}}` placeholders it must contain. Filling is one pass, so a value
//! that itself contains `{{…}}` (a question, a data overview) is never
//! expanded. [`version`] hashes a set of prompts, so resume keys see an
//! edited prompt as new work. Used by the agent loop and by model question
//! generation; knows nothing of either.

use sha2::{Digest, Sha256};

/// One prompt file and the placeholders it must use (and may only use).
#[derive(Debug)]
pub struct Prompt {
    pub name: &'static str,
    pub text: &'static str,
    pub needs: &'static [&'static str],
}

/// `prompt!("file.txt", ["placeholder", …])`: a [`Prompt`] read from
/// `prompts/file.txt` next to the module that names it.
#[macro_export]
macro_rules! prompt {
    ($file:literal, [$($need:literal),* $(,)?]) => {
        $crate::prompt::Prompt {
            name: $file,
            text: include_str!(concat!("prompts/", $file)),
            needs: &[$($need),*],
        }
    };
}

/// The `{{name}}` placeholders of a text, in order, with their byte spans.
pub fn placeholders(text: &str) -> Vec<(usize, usize, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find("{{").map(|i| from + i) {
        let Some(close) = text[open + 2..].find("}}").map(|i| open + 2 + i) else {
            break;
        };
        out.push((open, close + 2, text[open + 2..close].trim()));
        from = close + 2;
    }
    out
}

impl Prompt {
    /// The prompt with its placeholders filled.
    pub fn render(&self, values: &[(&str, &str)]) -> String {
        debug_assert!(
            self.needs
                .iter()
                .all(|n| values.iter().any(|(k, _)| k == n)),
            "{} rendered without all of {:?}",
            self.name,
            self.needs
        );
        let text = self.text.trim_end();
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for (start, end, name) in placeholders(text) {
            out.push_str(&text[last..start]);
            match values.iter().find(|(k, _)| *k == name) {
                Some((_, v)) => out.push_str(v),
                // Unreachable for checked files; leave the placeholder
                // visible rather than guess.
                None => out.push_str(&text[start..end]),
            }
            last = end;
        }
        out.push_str(&text[last..]);
        out
    }

    /// The text of a prompt without placeholders.
    pub fn text(&self) -> &'static str {
        self.text.trim_end()
    }

    /// The placeholders the file uses are exactly the declared ones, and
    /// rendering with all of them leaves none behind (for unit tests).
    pub fn check(&self) -> Result<(), String> {
        let mut used: Vec<&str> = placeholders(self.text).iter().map(|p| p.2).collect();
        used.sort_unstable();
        used.dedup();
        let mut needs: Vec<&str> = self.needs.to_vec();
        needs.sort_unstable();
        if used != needs {
            return Err(format!(
                "{}: uses {used:?} but declares {needs:?}",
                self.name
            ));
        }
        let values: Vec<(&str, &str)> = self.needs.iter().map(|n| (*n, "X")).collect();
        if self.render(&values).contains("{{") {
            return Err(format!(
                "{}: a placeholder is left after filling",
                self.name
            ));
        }
        Ok(())
    }
}

/// A short sha256 (12 hex) over the prompts' names and texts, in order.
pub fn version(prompts: &[&Prompt]) -> String {
    let mut hasher = Sha256::new();
    for p in prompts {
        hasher.update(p.name.as_bytes());
        hasher.update([0]);
        hasher.update(p.text.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize().as_slice())[..12].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filling_is_one_pass_and_checks_catch_strays() {
        let p = Prompt {
            name: "t",
            text: "Q: {{question}} H: {{hint}}\n",
            needs: &["question", "hint"],
        };
        assert_eq!(
            p.render(&[("question", "what is {{hint}}?"), ("hint", "none")]),
            "Q: what is {{hint}}? H: none"
        );
        assert!(p.check().is_ok());
        let bad = Prompt {
            name: "b",
            text: "{{question}} {{typo}}",
            needs: &["question"],
        };
        assert!(bad.check().unwrap_err().contains("typo"));
        assert_ne!(version(&[&p]), version(&[&bad]));
    }
}
