//! Validated model names.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Longest model name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A model's registry name: 1 to [`MAX_NAME_LEN`] bytes of lowercase ASCII
/// letters, digits, `_`, `-` and `.`, starting with a letter or digit and
/// never containing `..`. Such a name is safe as one object-path segment on
/// every backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName(String);

impl ModelName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self> {
        let refuse = |reason: String| Err(Error::invalid("name", format!("{name:?}: {reason}")));
        if name.is_empty() {
            return refuse("must not be empty".into());
        }
        if name.len() > MAX_NAME_LEN {
            return refuse(format!(
                "is {} bytes long, at most {MAX_NAME_LEN} allowed",
                name.len()
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(*c)))
        {
            let what = if bad == '/' || bad == '\\' {
                "path separators are not allowed".to_owned()
            } else {
                format!("character {bad:?} is not allowed (use a-z, 0-9, _, -, .)")
            };
            return refuse(what);
        }
        if name.contains("..") {
            return refuse("must not contain \"..\"".into());
        }
        if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return refuse("must start with a letter or digit".into());
        }
        Ok(ModelName(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ModelName {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self> {
        ModelName::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["churn", "channel_timing", "churn-v2.exp", "a", "9lives"] {
            assert_eq!(ModelName::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn refuses_unsafe_names_and_says_why() {
        let cases = [
            ("", "empty"),
            ("a/b", "path separator"),
            ("a\\b", "path separator"),
            ("..", "\"..\""),
            ("a..b", "\"..\""),
            (".hidden", "start with"),
            ("Churn", "'C'"),
            ("churn model", "' '"),
        ];
        for (name, reason) in cases {
            let error = ModelName::new(name).unwrap_err().to_string();
            assert!(error.starts_with("invalid name"), "{error}");
            assert!(error.contains(reason), "{name:?}: {error}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(
            ModelName::new(&long)
                .unwrap_err()
                .to_string()
                .contains("at most 64")
        );
        assert!(ModelName::new(&"a".repeat(MAX_NAME_LEN)).is_ok());
    }
}
