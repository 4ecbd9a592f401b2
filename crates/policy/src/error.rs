//! Errors found while reading a policy file, each pointing at a place in it.

/// Why a policy file was rejected, and where.
///
/// Every variant carries the file name given to [`Policy::parse`](crate::Policy::parse), a 1-based line and column
/// (in characters) and, except for TOML syntax errors, the key path of the offending value, such as `rules[3].when`,
/// `roles[id=sales].grants[1]` or `tiers.high.stages[0].approvers`. Array elements that have an `id` are named by it
/// (`[id=...]`), others (and duplicate ids) by their 0-based index.
///
/// `Display` gives `policy.toml:12:8: rules[id=eng].when: undeclared reference to 'departmnt'`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is not TOML.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// TOML that does not fit the policy schema: a wrong type, an unknown or missing key, a value not among those
    /// allowed.
    #[error("{file}:{line}:{column}: {path}: {message}")]
    Schema {
        file: String,
        line: usize,
        column: usize,
        path: String,
        message: String,
    },
    /// A reference to an entitlement, role, target or tier the policy does not define.
    #[error("{file}:{line}:{column}: {path}: {message}")]
    UnknownReference {
        file: String,
        line: usize,
        column: usize,
        path: String,
        message: String,
    },
    /// An id (or group mapping) defined twice.
    #[error("{file}:{line}:{column}: {path}: {message}")]
    Duplicate {
        file: String,
        line: usize,
        column: usize,
        path: String,
        message: String,
    },
    /// A CEL expression that does not compile, or that references a variable other than `user`, `enterprise`,
    /// `workforce`, `groups` and `now`.
    #[error("{file}:{line}:{column}: {path}: {message}")]
    Cel {
        file: String,
        line: usize,
        column: usize,
        path: String,
        message: String,
    },
    /// Any other rule of the policy broken (version, SoD with fewer than two sets, empty approver list, ...).
    #[error("{file}:{line}:{column}: {path}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        path: String,
        message: String,
    },
}

impl PolicyError {
    /// The file name given to `parse`.
    pub fn file(&self) -> &str {
        match self {
            PolicyError::Syntax { file, .. }
            | PolicyError::Schema { file, .. }
            | PolicyError::UnknownReference { file, .. }
            | PolicyError::Duplicate { file, .. }
            | PolicyError::Cel { file, .. }
            | PolicyError::Invalid { file, .. } => file,
        }
    }

    /// 1-based line and column (in characters) of the offending value.
    pub fn line_column(&self) -> (usize, usize) {
        match self {
            PolicyError::Syntax { line, column, .. }
            | PolicyError::Schema { line, column, .. }
            | PolicyError::UnknownReference { line, column, .. }
            | PolicyError::Duplicate { line, column, .. }
            | PolicyError::Cel { line, column, .. }
            | PolicyError::Invalid { line, column, .. } => (*line, *column),
        }
    }

    /// The key path of the offending value (empty for TOML syntax errors).
    pub fn path(&self) -> &str {
        match self {
            PolicyError::Syntax { .. } => "",
            PolicyError::Schema { path, .. }
            | PolicyError::UnknownReference { path, .. }
            | PolicyError::Duplicate { path, .. }
            | PolicyError::Cel { path, .. }
            | PolicyError::Invalid { path, .. } => path,
        }
    }

    /// What is wrong, without the location.
    pub fn message(&self) -> &str {
        match self {
            PolicyError::Syntax { message, .. }
            | PolicyError::Schema { message, .. }
            | PolicyError::UnknownReference { message, .. }
            | PolicyError::Duplicate { message, .. }
            | PolicyError::Cel { message, .. }
            | PolicyError::Invalid { message, .. } => message,
        }
    }

    fn offset_key(&self) -> (usize, usize) {
        self.line_column()
    }
}

/// The kinds of semantic error, to build a [`PolicyError`] from a location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Schema,
    UnknownReference,
    Duplicate,
    Cel,
    Invalid,
}

/// Turns byte offsets of the policy text into line and column, and collects errors.
pub(crate) struct Reporter<'a> {
    text: &'a str,
    file: &'a str,
    /// Byte offset of the start of every line.
    line_starts: Vec<usize>,
    pub(crate) errors: Vec<PolicyError>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(text: &'a str, file: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Reporter {
            text,
            file,
            line_starts,
            errors: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset; offsets past the end point just after the text.
    pub(crate) fn line_column(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts.get(line).copied().unwrap_or(0);
        let column = self.text.get(start..offset).map_or(0, |s| s.chars().count()) + 1;
        (line + 1, column)
    }

    pub(crate) fn syntax(&self, offset: usize, message: impl Into<String>) -> PolicyError {
        let (line, column) = self.line_column(offset);
        PolicyError::Syntax {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }

    pub(crate) fn make(
        &self,
        kind: Kind,
        offset: usize,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> PolicyError {
        let (line, column) = self.line_column(offset);
        let (file, path, message) = (self.file.to_owned(), path.into(), message.into());
        match kind {
            Kind::Schema => PolicyError::Schema {
                file,
                line,
                column,
                path,
                message,
            },
            Kind::UnknownReference => PolicyError::UnknownReference {
                file,
                line,
                column,
                path,
                message,
            },
            Kind::Duplicate => PolicyError::Duplicate {
                file,
                line,
                column,
                path,
                message,
            },
            Kind::Cel => PolicyError::Cel {
                file,
                line,
                column,
                path,
                message,
            },
            Kind::Invalid => PolicyError::Invalid {
                file,
                line,
                column,
                path,
                message,
            },
        }
    }

    /// Records an error at a byte offset.
    pub(crate) fn report(&mut self, kind: Kind, offset: usize, path: impl Into<String>, message: impl Into<String>) {
        let error = self.make(kind, offset, path, message);
        self.errors.push(error);
    }

    /// Where a byte offset is, as `line:column`, for messages that point at a second place.
    pub(crate) fn at(&self, offset: usize) -> String {
        let (line, column) = self.line_column(offset);
        format!("{line}:{column}")
    }

    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    /// The errors in the order they appear in the file.
    pub(crate) fn into_sorted(mut self) -> Vec<PolicyError> {
        self.errors.sort_by_key(PolicyError::offset_key);
        self.errors
    }
}
