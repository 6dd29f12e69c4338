//! Configuration errors that say where and why.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a configuration, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the source, when known.
    pub line: Option<u64>,
    /// 1-based column in the source, when known.
    pub column: Option<u64>,
    /// Field path, e.g. `services[2].backends[0].address`; empty for the document itself.
    pub path: String,
    /// What is wrong, for a human.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(line), Some(col)) = (self.line, self.column) {
            write!(f, "{line}:{col}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.reason)
    }
}

/// Every problem found in one configuration source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The source was read but is not a valid configuration.
    #[error("{}", render_invalid(source_name, problems))]
    Invalid {
        /// The file name, or a description such as `command line`.
        source_name: String,
        /// All problems, in document order.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The individual problems (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

fn render_invalid(source_name: &str, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(source_name);
        out.push(':');
        if p.line.is_none() {
            out.push(' ');
        }
        out.push_str(&p.to_string());
    }
    out
}
