//! Where a problem is (`file:line:column`) and what it is: the only error type of the
//! configuration model. Every check appends to a list, so all problems come out at once.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A position in a configuration file. `file` is relative to the configuration root
/// (`hostgroups/web.yaml`); `line` and `column` count from 1.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    pub file: Arc<Path>,
    pub line: usize,
    pub column: usize,
}

impl Span {
    /// A span at line `line`, column `column` of `file`.
    pub fn new(file: Arc<Path>, line: usize, column: usize) -> Span {
        Span { file, line, column }
    }

    /// Line 1, column 1 of `file`: for problems with a file as a whole.
    pub fn file_start(file: Arc<Path>) -> Span {
        Span {
            file,
            line: 1,
            column: 1,
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem: where, and a one-line reason.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    pub span: Span,
    pub message: String,
}

impl Diagnostic {
    /// A problem at `span`. Control characters in the message (which may quote the
    /// configuration) are escaped, so that a problem is always exactly one line.
    pub fn new(span: Span, message: impl Into<String>) -> Diagnostic {
        let message = message.into();
        let message = if message.chars().any(char::is_control) {
            message
                .chars()
                .map(|c| match c {
                    '\n' => "\\n".to_string(),
                    '\r' => "\\r".to_string(),
                    '\t' => "\\t".to_string(),
                    c if c.is_control() => format!("\\u{{{:x}}}", c as u32),
                    c => c.to_string(),
                })
                .collect()
        } else {
            message
        };
        Diagnostic { span, message }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.span, self.message)
    }
}

/// Every problem found, sorted by file, line and column, without duplicates.
/// Displays one problem per line, each ending in a newline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Sort and deduplicate `list`.
    pub fn new(mut list: Vec<Diagnostic>) -> Diagnostics {
        list.sort();
        list.dedup();
        Diagnostics(list)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A growing list of problems, passed to every check.
#[derive(Default, Debug)]
pub(crate) struct Sink {
    pub list: Vec<Diagnostic>,
}

impl Sink {
    pub fn err(&mut self, span: &Span, message: impl Into<String>) {
        self.list.push(Diagnostic::new(span.clone(), message));
    }

    pub fn extend(&mut self, other: impl IntoIterator<Item = Diagnostic>) {
        self.list.extend(other);
    }
}
