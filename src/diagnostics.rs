//! Diagnostics: what is wrong with an input, where (file, line, column, JSON pointer) and what
//! was expected, rendered the way a compiler does.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The document cannot be applied.
    Error,
    /// The document applies, but something looks unintended.
    Warning,
}

/// One problem found in one place of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file, as the user named it (relative to the project where possible).
    pub file: String,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: u32,
    /// 1-based column (in characters); 0 when unknown.
    pub column: u32,
    /// JSON pointer to the offending value inside the file (`/steps/0/agent`), empty for the
    /// whole file.
    pub pointer: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Diagnostic {
    /// An error at a place in a file.
    pub fn error(file: &str, line: u32, column: u32, pointer: &str, message: String) -> Self {
        Self {
            severity: Severity::Error,
            file: file.to_owned(),
            line,
            column,
            pointer: pointer.to_owned(),
            message,
        }
    }

    /// A warning at a place in a file.
    pub fn warning(file: &str, line: u32, column: u32, pointer: &str, message: String) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(file, line, column, pointer, message)
        }
    }

    /// Whether this diagnostic stops its document from applying.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:col`, leaving out what is unknown.
    pub fn location(&self) -> String {
        match (self.line, self.column) {
            (0, _) => self.file.clone(),
            (line, 0) => format!("{}:{line}", self.file),
            (line, column) => format!("{}:{line}:{column}", self.file),
        }
    }

    /// One line: `file:line:col: error: message (at /pointer)`.
    pub fn one_line(&self) -> String {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = format!("{}: {severity}: {}", self.location(), self.message);
        if !self.pointer.is_empty() {
            let _ = write!(out, " (at {})", self.pointer);
        }
        out
    }

    /// Compiler-style rendering with the source line and a caret under the column, when the
    /// source text is at hand.
    pub fn render(&self, source: Option<&str>, color: bool) -> String {
        let (bold_red, bold_yellow, blue, bold, reset) = if color {
            (
                "\x1b[1;31m",
                "\x1b[1;33m",
                "\x1b[1;34m",
                "\x1b[1m",
                "\x1b[0m",
            )
        } else {
            ("", "", "", "", "")
        };
        let (label, label_color) = match self.severity {
            Severity::Error => ("error", bold_red),
            Severity::Warning => ("warning", bold_yellow),
        };
        let mut out = format!(
            "{label_color}{label}{reset}{bold}: {}{reset}\n",
            self.message
        );
        let pointer = if self.pointer.is_empty() {
            String::new()
        } else {
            format!(" at {}", self.pointer)
        };
        let _ = writeln!(out, "  {blue}-->{reset} {}{pointer}", self.location());
        let line_text = source
            .filter(|_| self.line > 0)
            .and_then(|text| text.lines().nth(self.line as usize - 1));
        if let Some(line_text) = line_text {
            let number = self.line.to_string();
            let gutter = " ".repeat(number.len());
            let shown: String = line_text.chars().take(200).collect();
            let _ = writeln!(out, "{blue}{gutter} |{reset}");
            let _ = writeln!(out, "{blue}{number} |{reset} {shown}");
            if self.column > 0 {
                let pad: String = line_text
                    .chars()
                    .take(self.column as usize - 1)
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                let _ = writeln!(out, "{blue}{gutter} |{reset} {pad}{label_color}^{reset}");
            }
        }
        out
    }
}

/// Counts of errors and warnings in a list of diagnostics.
pub fn count(diagnostics: &[Diagnostic]) -> (usize, usize) {
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    (errors, diagnostics.len() - errors)
}

/// A JSON pointer segment with `~` and `/` escaped (RFC 6901).
pub fn escape_pointer_segment(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_snippet_with_caret_under_column() {
        let diagnostic = Diagnostic::error(
            "workflows/a.yaml",
            2,
            7,
            "/steps",
            "expected an array".into(),
        );
        let rendered = diagnostic.render(Some("name: a\nsteps: 5\n"), false);
        assert_eq!(
            rendered,
            "error: expected an array\n  --> workflows/a.yaml:2:7 at /steps\n  |\n2 | steps: 5\n  |       ^\n"
        );
    }

    #[test]
    fn one_line_leaves_out_unknown_parts() {
        let diagnostic = Diagnostic::warning("a.json", 0, 0, "", "empty file".into());
        assert_eq!(diagnostic.one_line(), "a.json: warning: empty file");
    }
}
