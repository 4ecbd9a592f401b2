//! SCIM filter (RFC 7644 §3.4.2.2) and PATCH path (RFC 7644 §3.5.2) parsing.
//!
//! This module turns the text of a `filter=` query parameter or of a PATCH
//! operation's `path` into a small syntax tree. It is pure code: no I/O, no
//! schema knowledge. Attribute names keep the case the client sent; resolving
//! them against a schema happens elsewhere.
//!
//! # Grammar
//!
//! The accepted language is RFC 7644's ABNF plus a few quirks seen from real
//! clients (marked *quirk*). Keywords and operators are case-insensitive.
//!
//! ```text
//! FILTER    = OR-EXPR
//! OR-EXPR   = AND-EXPR *( "or" AND-EXPR )              ; left-associative
//! AND-EXPR  = UNARY *( "and" UNARY )                   ; left-associative
//! UNARY     = "not" "(" FILTER ")"                     ; `not` binds tightest
//!           / "(" FILTER ")"
//!           / ATTR-EXPR
//! ATTR-EXPR = ATTRPATH "pr"
//!           / ATTRPATH COMPAREOP COMPVALUE
//!           / VALUEPATH [ "." ATTRNAME ( "pr" / COMPAREOP COMPVALUE ) ]
//!                                                      ; quirk (Microsoft Entra)
//! VALUEPATH = ATTRPATH "[" FILTER "]"                  ; no nested brackets
//! COMPAREOP = "eq" / "ne" / "co" / "sw" / "ew" / "gt" / "ge" / "lt" / "le"
//! COMPVALUE = JSON-STRING / JSON-NUMBER / "true" / "false" / "null"
//!           / BARE-TOKEN                               ; quirk: unquoted string
//!
//! ATTRPATH  = [ URI ":" ] ATTRNAME [ "." ATTRNAME ]
//! ATTRNAME  = ( ALPHA / "$" ) *( ALPHA / DIGIT / "-" / "_" / "$" )
//!
//! PATH      = ATTRPATH / VALUEPATH [ "." ATTRNAME ]    ; PATCH paths
//! ```
//!
//! Notes:
//!
//! * Schema URNs contain dots (`...:2.0:User`), so a path starting with
//!   `urn:` is first split at its **last** `:`; only the remainder is split
//!   at `.` into attribute and sub-attribute.
//! * `$` is accepted in names so that `$ref` works.
//! * A `BARE-TOKEN` is any run of characters up to whitespace, `)` or `]`
//!   that is not `true`/`false`/`null` and not a JSON number; it becomes a
//!   [`CompValue::Str`]. Some Entra tenants send `externalId eq jyoung`.
//! * The Entra form `emails[type eq "work"].value eq "x"` is folded into the
//!   bracket filter: `emails[type eq "work" and value eq "x"]`.
//! * `not` must be followed by a parenthesised filter. A word `not` that is
//!   followed by an operator (or `[`) is an attribute called `not`; anything
//!   else after `not` is a syntax error.
//! * Tokens are separated by spaces or tabs (any ASCII whitespace is
//!   accepted); leading and trailing whitespace is ignored.
//!
//! # Limits
//!
//! [`FilterLimits`] bounds the input length (checked first, before any
//! parsing) and the nesting depth. Every parenthesised group, every `not` and
//! every `[...]` counts as one level. The depth is checked *before* the
//! parser recurses, so pathological input such as 100 000 `(` cannot
//! overflow the stack. Independently of the configured limit, the depth is
//! capped at [`HARD_MAX_DEPTH`] for the same reason.
//!
//! # Display
//!
//! Every type implements [`fmt::Display`], producing canonical text:
//! lowercase operators and keywords, JSON-quoted strings, only the
//! parentheses needed to keep the tree's shape, and value paths always in
//! bracket form. For any tree `f` the parser produces,
//! `parse_filter(&f.to_string(), ..) == Ok(f)`.

use std::fmt;

/// Nesting ceiling applied regardless of [`FilterLimits::max_depth`], so a
/// misconfigured limit cannot let the recursive-descent parser overflow the
/// stack.
pub const HARD_MAX_DEPTH: usize = 256;

/// An attribute reference: `[urn:]attr[.sub]`.
///
/// `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value`
/// has `urn = Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")`,
/// `attr = "manager"`, `sub = Some("value")`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttrPath {
    /// Schema URN prefix, without the trailing `:`.
    pub urn: Option<String>,
    /// Attribute name, as sent by the client.
    pub attr: String,
    /// Sub-attribute name, as sent by the client.
    pub sub: Option<String>,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `eq`: equal.
    Eq,
    /// `ne`: not equal.
    Ne,
    /// `co`: contains.
    Co,
    /// `sw`: starts with.
    Sw,
    /// `ew`: ends with.
    Ew,
    /// `gt`: greater than.
    Gt,
    /// `ge`: greater than or equal.
    Ge,
    /// `lt`: less than.
    Lt,
    /// `le`: less than or equal.
    Le,
}

impl CompareOp {
    /// All operators, in RFC order.
    const ALL: [CompareOp; 9] = [
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Co,
        CompareOp::Sw,
        CompareOp::Ew,
        CompareOp::Gt,
        CompareOp::Ge,
        CompareOp::Lt,
        CompareOp::Le,
    ];

    /// The canonical (lowercase) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }

    /// Recognises an operator keyword, ignoring ASCII case.
    fn from_keyword(word: &str) -> Option<CompareOp> {
        Self::ALL.into_iter().find(|op| word.eq_ignore_ascii_case(op.as_str()))
    }
}

/// The literal on the right-hand side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum CompValue {
    /// A string (quoted, or a bare token from a lenient client).
    Str(String),
    /// A JSON number.
    Num(serde_json::Number),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
}

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `path op value`.
    Compare {
        /// The attribute compared.
        path: AttrPath,
        /// The operator.
        op: CompareOp,
        /// The literal compared against.
        value: CompValue,
    },
    /// `path pr`.
    Present(AttrPath),
    /// `left and right`.
    And(Box<Filter>, Box<Filter>),
    /// `left or right`.
    Or(Box<Filter>, Box<Filter>),
    /// `not (inner)`.
    Not(Box<Filter>),
    /// `emails[type eq "work" and value co "@x"]`; path.sub is always None here
    ValuePath {
        /// The multi-valued (complex) attribute.
        path: AttrPath,
        /// The filter applied to each of its values.
        filter: Box<Filter>,
    },
}

/// Resource limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct FilterLimits {
    /// Maximum input length, in characters.
    pub max_len: usize,
    /// Maximum nesting depth (groups, `not`s and `[...]`s).
    pub max_depth: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits {
            max_len: 4096,
            max_depth: 16,
        }
    }
}

/// Why a filter or path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The input exceeds [`FilterLimits::max_len`].
    #[error("filter is {len} characters long; the limit is {max}")]
    TooLong {
        /// Input length in characters.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input nests deeper than allowed.
    #[error("filter nests deeper than {max} levels")]
    TooDeep {
        /// The effective limit.
        max: usize,
    },
    /// The input is not a valid filter or path.
    #[error("invalid filter at position {pos}: {msg}")]
    Syntax {
        /// Byte offset into the input.
        pos: usize,
        /// Human-readable description.
        msg: String,
    },
}

/// A PATCH operation path: `attrPath` or `valuePath [ "." subAttr ]`.
///
/// For `emails[type eq "work"].value`, `attr` is `emails` (with `sub: None`),
/// `filter` is `type eq "work"` and `sub` is `Some("value")`. For plain
/// `name.familyName`, `attr` carries the sub-attribute and `filter`/`sub`
/// are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    /// The targeted attribute.
    pub attr: AttrPath,
    /// The value filter in brackets, if any.
    pub filter: Option<Filter>,
    /// The sub-attribute after the brackets, if any.
    pub sub: Option<String>,
}

/// Parses a SCIM filter expression.
pub fn parse_filter(input: &str, limits: &FilterLimits) -> Result<Filter, FilterError> {
    check_len(input, limits)?;
    let mut p = Parser::new(input, limits);
    let filter = p.parse_or()?;
    p.skip_ws();
    if !p.at_end() {
        return Err(p.trailing_error());
    }
    Ok(filter)
}

/// Parses a PATCH operation path.
pub fn parse_patch_path(input: &str, limits: &FilterLimits) -> Result<PatchPath, FilterError> {
    check_len(input, limits)?;
    let mut p = Parser::new(input, limits);
    p.skip_ws();
    let attr = p.parse_attr_path()?;
    let mut filter = None;
    let mut sub = None;
    if p.peek() == Some('[') {
        filter = Some(p.parse_bracket(&attr)?);
        if p.peek() == Some('.') {
            p.pos += 1;
            sub = Some(p.parse_sub_name()?.to_owned());
        }
    }
    p.skip_ws();
    if !p.at_end() {
        let found = p.describe_here();
        return Err(p.syntax(p.pos, format!("expected end of path, found {found}")));
    }
    Ok(PatchPath { attr, filter, sub })
}

/// Rejects input longer than the limit, before anything else looks at it.
fn check_len(input: &str, limits: &FilterLimits) -> Result<(), FilterError> {
    // Byte length bounds the character count from above, so counting
    // characters is only needed when the bytes already exceed the limit.
    if input.len() > limits.max_len {
        let len = input.chars().count();
        if len > limits.max_len {
            return Err(FilterError::TooLong {
                len,
                max: limits.max_len,
            });
        }
    }
    Ok(())
}

/// Characters that end a word (attribute path, keyword or operator).
fn is_word_delim(c: char) -> bool {
    c.is_ascii_whitespace() || matches!(c, '(' | ')' | '[' | ']' | '"')
}

/// Characters that end an unquoted comparison value.
fn is_bare_value_delim(c: char) -> bool {
    c.is_ascii_whitespace() || matches!(c, ')' | ']')
}

/// Shortens `s` for an error message, cutting at a character boundary.
fn snippet(s: &str) -> String {
    const MAX: usize = 32;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("'{}...'", &s[..cut]),
        None => format!("'{s}'"),
    }
}

/// Validates an attribute or sub-attribute name; `offset` is where `name`
/// starts in the input, for error positions.
fn validate_name(name: &str, offset: usize, what: &str) -> Result<(), FilterError> {
    let mut chars = name.char_indices();
    let Some((_, first)) = chars.next() else {
        return Err(FilterError::Syntax {
            pos: offset,
            msg: format!("expected {what}"),
        });
    };
    if !(first.is_ascii_alphabetic() || first == '$') {
        return Err(FilterError::Syntax {
            pos: offset,
            msg: format!("{what} must start with a letter, found '{first}'"),
        });
    }
    if first == '$' && !name[1..].starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(FilterError::Syntax {
            pos: offset,
            msg: format!("'$' in {what} must be followed by a letter"),
        });
    }
    for (i, c) in chars {
        if !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '$')) {
            return Err(FilterError::Syntax {
                pos: offset + i,
                msg: format!("invalid character '{c}' in {what}"),
            });
        }
    }
    Ok(())
}

/// Characters allowed in the schema-URN prefix of an attribute path.
fn is_urn_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            ':' | '-' | '.' | '_' | '+' | ',' | '=' | '@' | ';' | '$' | '!' | '*' | '\'' | '%' | '/'
        )
}

/// Splits a path word into its URN, attribute and sub-attribute parts.
/// `offset` is where `word` starts in the input.
fn split_attr_path(word: &str, offset: usize) -> Result<AttrPath, FilterError> {
    let is_urn = word.get(..4).is_some_and(|prefix| prefix.eq_ignore_ascii_case("urn:"));
    let (urn, rest, rest_offset) = if is_urn {
        // `urn:` is ASCII, so index 3 is the colon of the prefix itself; a
        // later colon must separate the URN from the attribute.
        let colon = word.rfind(':').filter(|&i| i > 3).ok_or_else(|| FilterError::Syntax {
            pos: offset,
            msg: "schema URN must be followed by ':' and an attribute name".to_owned(),
        })?;
        let urn = &word[..colon];
        if let Some((i, c)) = urn.char_indices().find(|&(_, c)| !is_urn_char(c)) {
            return Err(FilterError::Syntax {
                pos: offset + i,
                msg: format!("invalid character '{c}' in schema URN"),
            });
        }
        (Some(urn.to_owned()), &word[colon + 1..], offset + colon + 1)
    } else {
        (None, word, offset)
    };
    let (attr, sub) = match rest.split_once('.') {
        Some((attr, sub)) => {
            let sub_offset = rest_offset + attr.len() + 1;
            if let Some(i) = sub.find('.') {
                return Err(FilterError::Syntax {
                    pos: sub_offset + i,
                    msg: "an attribute path has at most one '.'".to_owned(),
                });
            }
            validate_name(sub, sub_offset, "a sub-attribute name")?;
            (attr, Some(sub.to_owned()))
        }
        None => (rest, None),
    };
    validate_name(attr, rest_offset, "an attribute name")?;
    Ok(AttrPath {
        urn,
        attr: attr.to_owned(),
        sub,
    })
}

/// Whether `s` follows the JSON number grammar
/// (`-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`).
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// Recursive-descent parser over the input text. Lexing is done on demand
/// (the meaning of a token depends on where it appears: `eq` is an operator
/// after a path but may itself be a path elsewhere), via [`Parser::word`],
/// [`Parser::parse_value`] and single-character checks.
///
/// Invariant: `pos` is always on a character boundary of `src`.
struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
    max_depth: usize,
    in_brackets: bool,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str, limits: &FilterLimits) -> Self {
        Parser {
            src,
            pos: 0,
            depth: 0,
            max_depth: limits.max_depth.min(HARD_MAX_DEPTH),
            in_brackets: false,
        }
    }

    // ----- low-level scanning -------------------------------------------

    fn rest_from(&self, at: usize) -> &'a str {
        self.src.get(at..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest_from(self.pos).chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    /// First non-whitespace position at or after `at`.
    fn skip_ws_from(&self, at: usize) -> usize {
        let rest = self.rest_from(at);
        at + (rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_whitespace()).len())
    }

    fn skip_ws(&mut self) {
        self.pos = self.skip_ws_from(self.pos);
    }

    /// The (possibly empty) word starting at `at`, ending before whitespace,
    /// a bracket, a parenthesis or a quote.
    fn word_at(&self, at: usize) -> &'a str {
        let rest = self.rest_from(at);
        let end = rest.find(is_word_delim).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Consumes and returns the word at the current position.
    fn word(&mut self) -> (usize, &'a str) {
        let start = self.pos;
        let w = self.word_at(start);
        self.pos += w.len();
        (start, w)
    }

    fn syntax(&self, pos: usize, msg: impl Into<String>) -> FilterError {
        FilterError::Syntax { pos, msg: msg.into() }
    }

    /// Describes the token at the current position for error messages.
    fn describe_here(&self) -> String {
        match self.peek() {
            None => "end of input".to_owned(),
            Some(c) if is_word_delim(c) => format!("'{c}'"),
            Some(_) => snippet(self.word_at(self.pos)),
        }
    }

    /// The error for unexpected input after a complete top-level filter.
    fn trailing_error(&self) -> FilterError {
        let msg = match self.peek() {
            Some(')') => "unbalanced ')'".to_owned(),
            Some(']') => "unbalanced ']'".to_owned(),
            _ => format!("expected 'and', 'or' or end of input, found {}", self.describe_here()),
        };
        self.syntax(self.pos, msg)
    }

    /// Enters one nesting level, failing before any recursion if too deep.
    fn enter(&mut self) -> Result<(), FilterError> {
        if self.depth >= self.max_depth {
            return Err(FilterError::TooDeep { max: self.max_depth });
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    // ----- filter grammar -----------------------------------------------

    /// If the next word (after whitespace) is `keyword`, consumes it.
    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let at = self.skip_ws_from(self.pos);
        let w = self.word_at(at);
        if w.eq_ignore_ascii_case(keyword) {
            self.pos = at + w.len();
            true
        } else {
            false
        }
    }

    /// `OR-EXPR = AND-EXPR *( "or" AND-EXPR )`
    fn parse_or(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.parse_and()?;
        while self.eat_keyword("or") {
            let right = self.parse_and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    /// `AND-EXPR = UNARY *( "and" UNARY )`
    fn parse_and(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.parse_unary()?;
        while self.eat_keyword("and") {
            let right = self.parse_unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    /// `UNARY = "not" "(" FILTER ")" / "(" FILTER ")" / ATTR-EXPR`
    fn parse_unary(&mut self) -> Result<Filter, FilterError> {
        self.skip_ws();
        if self.peek() == Some('(') {
            return self.parse_group();
        }
        let w = self.word_at(self.pos);
        if w.eq_ignore_ascii_case("not") {
            let after = self.pos + w.len();
            let next = self.skip_ws_from(after);
            if self.rest_from(next).starts_with('(') {
                self.enter()?;
                self.pos = next;
                let inner = self.parse_group()?;
                self.leave();
                return Ok(Filter::Not(Box::new(inner)));
            }
            // `not` may still be an attribute name (`not eq 1`, `not[...]`).
            let next_word = self.word_at(next);
            let is_attr = self.rest_from(after).starts_with('[')
                || next_word.eq_ignore_ascii_case("pr")
                || CompareOp::from_keyword(next_word).is_some();
            if !is_attr {
                return Err(self.syntax(
                    next,
                    "'not' must be followed by a parenthesised filter, e.g. not (title pr)",
                ));
            }
        }
        self.parse_attr_expr()
    }

    /// `"(" FILTER ")"`, with the current position on the `(`.
    fn parse_group(&mut self) -> Result<Filter, FilterError> {
        let open = self.pos;
        self.enter()?;
        self.pos += 1;
        let inner = self.parse_or()?;
        self.skip_ws();
        if self.peek() != Some(')') {
            let found = self.describe_here();
            return Err(self.syntax(
                self.pos,
                format!("expected ')' to close the '(' at position {open}, found {found}"),
            ));
        }
        self.pos += 1;
        self.leave();
        Ok(inner)
    }

    /// Reads an attribute path at the current position.
    fn parse_attr_path(&mut self) -> Result<AttrPath, FilterError> {
        let (start, w) = self.word();
        if w.is_empty() {
            let found = self.describe_here();
            return Err(self.syntax(start, format!("expected an attribute path, found {found}")));
        }
        split_attr_path(w, start)
    }

    /// Reads a bare attribute name (used after `].`).
    fn parse_sub_name(&mut self) -> Result<&'a str, FilterError> {
        let (start, w) = self.word();
        validate_name(w, start, "a sub-attribute name after '.'")?;
        Ok(w)
    }

    /// `"[" FILTER "]"`, with the current position on the `[`; `path` is the
    /// attribute in front of the bracket.
    fn parse_bracket(&mut self, path: &AttrPath) -> Result<Filter, FilterError> {
        let open = self.pos;
        if self.in_brackets {
            return Err(self.syntax(open, "nested '[' is not allowed inside a value filter"));
        }
        if path.sub.is_some() {
            return Err(self.syntax(open, "a value filter '[...]' cannot follow a sub-attribute"));
        }
        self.enter()?;
        self.pos += 1;
        self.in_brackets = true;
        let inner = self.parse_or()?;
        self.skip_ws();
        if self.peek() != Some(']') {
            let found = self.describe_here();
            return Err(self.syntax(
                self.pos,
                format!("expected ']' to close the '[' at position {open}, found {found}"),
            ));
        }
        self.pos += 1;
        self.in_brackets = false;
        self.leave();
        Ok(inner)
    }

    /// `ATTR-EXPR`: a comparison, a presence test or a value path.
    fn parse_attr_expr(&mut self) -> Result<Filter, FilterError> {
        let path = self.parse_attr_path()?;
        if self.peek() != Some('[') {
            return self.parse_op_and_value(path);
        }
        let mut filter = self.parse_bracket(&path)?;
        // Entra quirk: `emails[type eq "work"].value eq "x"` folds the
        // trailing comparison into the bracket filter.
        if self.peek() == Some('.') {
            self.pos += 1;
            let sub = self.parse_sub_name()?;
            let sub_path = AttrPath {
                urn: None,
                attr: sub.to_owned(),
                sub: None,
            };
            let tail = self.parse_op_and_value(sub_path)?;
            filter = Filter::And(Box::new(filter), Box::new(tail));
        }
        Ok(Filter::ValuePath {
            path,
            filter: Box::new(filter),
        })
    }

    /// `"pr"` or `COMPAREOP COMPVALUE` after an attribute path.
    fn parse_op_and_value(&mut self, path: AttrPath) -> Result<Filter, FilterError> {
        self.skip_ws();
        let (start, w) = self.word();
        if w.is_empty() {
            let found = self.describe_here();
            return Err(self.syntax(start, format!("expected an operator, found {found}")));
        }
        if w.eq_ignore_ascii_case("pr") {
            return Ok(Filter::Present(path));
        }
        let Some(op) = CompareOp::from_keyword(w) else {
            return Err(self.syntax(
                start,
                format!(
                    "unknown operator {}; expected one of eq, ne, co, sw, ew, gt, ge, lt, le, pr",
                    snippet(w)
                ),
            ));
        };
        let value = self.parse_value(op)?;
        Ok(Filter::Compare { path, op, value })
    }

    /// `COMPVALUE`: a JSON string, number, boolean, null or bare token.
    fn parse_value(&mut self, op: CompareOp) -> Result<CompValue, FilterError> {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            None | Some(')' | ']' | '(' | '[') => {
                let found = self.describe_here();
                Err(self.syntax(
                    start,
                    format!("expected a value after '{}', found {found}", op.as_str()),
                ))
            }
            Some('"') => self.parse_string().map(CompValue::Str),
            Some(_) => {
                let rest = self.rest_from(start);
                let token = &rest[..rest.find(is_bare_value_delim).unwrap_or(rest.len())];
                self.pos += token.len();
                if token.eq_ignore_ascii_case("true") {
                    Ok(CompValue::Bool(true))
                } else if token.eq_ignore_ascii_case("false") {
                    Ok(CompValue::Bool(false))
                } else if token.eq_ignore_ascii_case("null") {
                    Ok(CompValue::Null)
                } else if is_json_number(token) {
                    serde_json::from_str::<serde_json::Number>(token)
                        .map(CompValue::Num)
                        .map_err(|_| self.syntax(start, "number out of range"))
                } else {
                    // Lenient clients send unquoted strings.
                    Ok(CompValue::Str(token.to_owned()))
                }
            }
        }
    }

    /// A JSON string literal, with the current position on the opening `"`.
    fn parse_string(&mut self) -> Result<String, FilterError> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        // Find the closing quote. Scanning bytes is safe: `"` and `\` are
        // ASCII and never occur inside a multi-byte UTF-8 sequence.
        let mut i = start + 1;
        let end = loop {
            match bytes.get(i) {
                None => return Err(self.syntax(start, "unterminated string")),
                Some(b'\\') => i += 2,
                Some(b'"') => break i + 1,
                Some(_) => i += 1,
            }
        };
        let literal = self.src.get(start..end).unwrap_or("");
        let s = serde_json::from_str::<String>(literal)
            .map_err(|e| self.syntax(start, format!("invalid string literal: {e}")))?;
        self.pos = end;
        Ok(s)
    }
}

// ----- Display --------------------------------------------------------------

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(urn) = &self.urn {
            write!(f, "{urn}:")?;
        }
        f.write_str(&self.attr)?;
        if let Some(sub) = &self.sub {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes `s` as a JSON string literal.
fn write_json_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    use fmt::Write as _;
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '\u{08}' => f.write_str("\\b")?,
            '\u{0C}' => f.write_str("\\f")?,
            c if c < ' ' => write!(f, "\\u{:04x}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

impl fmt::Display for CompValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompValue::Str(s) => write_json_string(f, s),
            CompValue::Num(n) => write!(f, "{n}"),
            CompValue::Bool(b) => write!(f, "{b}"),
            CompValue::Null => f.write_str("null"),
        }
    }
}

/// Writes `child`, in parentheses when `parens` is set.
fn write_child(f: &mut fmt::Formatter<'_>, child: &Filter, parens: bool) -> fmt::Result {
    if parens {
        write!(f, "({child})")
    } else {
        write!(f, "{child}")
    }
}

impl fmt::Display for Filter {
    /// Emits only the parentheses needed to preserve the tree: `and` binds
    /// tighter than `or` and both are left-associative, so a left child needs
    /// them only for `or` under `and`, and a right child whenever it is a
    /// binary node of equal or lower precedence.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Compare { path, op, value } => write!(f, "{path} {op} {value}"),
            Filter::Present(path) => write!(f, "{path} pr"),
            Filter::And(l, r) => {
                write_child(f, l, matches!(**l, Filter::Or(..)))?;
                f.write_str(" and ")?;
                write_child(f, r, matches!(**r, Filter::And(..) | Filter::Or(..)))
            }
            Filter::Or(l, r) => {
                write_child(f, l, false)?;
                f.write_str(" or ")?;
                write_child(f, r, matches!(**r, Filter::Or(..)))
            }
            Filter::Not(inner) => write!(f, "not ({inner})"),
            Filter::ValuePath { path, filter } => write!(f, "{path}[{filter}]"),
        }
    }
}

impl fmt::Display for PatchPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.attr)?;
        if let Some(filter) = &self.filter {
            write!(f, "[{filter}]")?;
        }
        if let Some(sub) = &self.sub {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ----- helpers ----------------------------------------------------------

    fn parse(s: &str) -> Result<Filter, FilterError> {
        parse_filter(s, &FilterLimits::default())
    }

    fn ok(s: &str) -> Filter {
        match parse(s) {
            Ok(f) => f,
            Err(e) => panic!("{s:?} failed to parse: {e}"),
        }
    }

    fn path(s: &str) -> PatchPath {
        match parse_patch_path(s, &FilterLimits::default()) {
            Ok(p) => p,
            Err(e) => panic!("{s:?} failed to parse: {e}"),
        }
    }

    /// Asserts a syntax error at `pos` and returns its message.
    fn syntax_err(s: &str, pos: usize) -> String {
        match parse(s) {
            Err(FilterError::Syntax { pos: p, msg }) => {
                assert_eq!(p, pos, "wrong position for {s:?}: {msg}");
                msg
            }
            other => panic!("expected a syntax error for {s:?}, got {other:?}"),
        }
    }

    fn ap(attr: &str) -> AttrPath {
        AttrPath {
            urn: None,
            attr: attr.into(),
            sub: None,
        }
    }

    fn ap_sub(attr: &str, sub: &str) -> AttrPath {
        AttrPath {
            urn: None,
            attr: attr.into(),
            sub: Some(sub.into()),
        }
    }

    fn cmp(p: AttrPath, op: CompareOp, value: CompValue) -> Filter {
        Filter::Compare { path: p, op, value }
    }

    fn s(v: &str) -> CompValue {
        CompValue::Str(v.into())
    }

    fn pr(a: &str) -> Filter {
        Filter::Present(ap(a))
    }

    fn and(l: Filter, r: Filter) -> Filter {
        Filter::And(Box::new(l), Box::new(r))
    }

    fn or(l: Filter, r: Filter) -> Filter {
        Filter::Or(Box::new(l), Box::new(r))
    }

    fn not(f: Filter) -> Filter {
        Filter::Not(Box::new(f))
    }

    fn vp(a: &str, f: Filter) -> Filter {
        Filter::ValuePath {
            path: ap(a),
            filter: Box::new(f),
        }
    }

    fn assert_round_trip(f: &Filter) {
        let text = f.to_string();
        let limits = FilterLimits {
            max_len: usize::MAX,
            max_depth: HARD_MAX_DEPTH,
        };
        assert_eq!(parse_filter(&text, &limits).as_ref(), Ok(f), "text: {text}");
    }

    const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

    // ----- paths ------------------------------------------------------------

    #[test]
    fn filter_urn_path_with_sub_attribute() {
        let f = ok(&format!("{ENTERPRISE}:manager.value eq \"123\""));
        assert_eq!(
            f,
            cmp(
                AttrPath {
                    urn: Some(ENTERPRISE.into()),
                    attr: "manager".into(),
                    sub: Some("value".into()),
                },
                CompareOp::Eq,
                s("123")
            )
        );
    }

    #[test]
    fn filter_urn_prefix_is_case_insensitive() {
        let f = ok("URN:ietf:params:scim:schemas:core:2.0:User:userName sw \"J\"");
        assert_eq!(
            f,
            cmp(
                AttrPath {
                    urn: Some("URN:ietf:params:scim:schemas:core:2.0:User".into()),
                    attr: "userName".into(),
                    sub: None,
                },
                CompareOp::Sw,
                s("J")
            )
        );
    }

    #[test]
    fn filter_dotted_path_keeps_case() {
        assert_eq!(
            ok("name.givenName eq \"Bo\""),
            cmp(ap_sub("name", "givenName"), CompareOp::Eq, s("Bo"))
        );
        assert_eq!(ok("NAME.GivenName pr"), Filter::Present(ap_sub("NAME", "GivenName")));
    }

    #[test]
    fn filter_dollar_ref_names() {
        assert_eq!(ok("members.$ref pr"), Filter::Present(ap_sub("members", "$ref")));
        assert_eq!(ok("$ref pr"), pr("$ref"));
        assert_eq!(
            ok("x-y_z1$ eq 1"),
            cmp(ap("x-y_z1$"), CompareOp::Eq, CompValue::Num(1.into()))
        );
    }

    #[test]
    fn filter_invalid_paths() {
        syntax_err("1abc pr", 0);
        syntax_err("a.b.c pr", 3);
        syntax_err("a. pr", 2);
        syntax_err("foo:bar pr", 3);
        syntax_err("urn:foo pr", 0);
        syntax_err("urn:a:b: pr", 8);
        syntax_err("$ pr", 0);
        syntax_err("é pr", 0);
        syntax_err("aé pr", 1);
    }

    // ----- operators, keywords and precedence --------------------------------

    #[test]
    fn filter_all_operators_case_insensitive() {
        let cases = [
            ("eq", CompareOp::Eq),
            ("NE", CompareOp::Ne),
            ("Co", CompareOp::Co),
            ("sW", CompareOp::Sw),
            ("EW", CompareOp::Ew),
            ("gt", CompareOp::Gt),
            ("Ge", CompareOp::Ge),
            ("LT", CompareOp::Lt),
            ("le", CompareOp::Le),
        ];
        for (text, op) in cases {
            assert_eq!(ok(&format!("a {text} \"x\"")), cmp(ap("a"), op, s("x")));
        }
        assert_eq!(ok("title PR"), pr("title"));
        assert_eq!(
            ok("a pr AND b pr Or NOT (c pr)"),
            or(and(pr("a"), pr("b")), not(pr("c")))
        );
    }

    #[test]
    fn filter_precedence_and_associativity() {
        assert_eq!(ok("a pr or b pr and c pr"), or(pr("a"), and(pr("b"), pr("c"))));
        assert_eq!(ok("a pr and b pr or c pr"), or(and(pr("a"), pr("b")), pr("c")));
        assert_eq!(ok("a pr and b pr and c pr"), and(and(pr("a"), pr("b")), pr("c")));
        assert_eq!(ok("a pr or b pr or c pr"), or(or(pr("a"), pr("b")), pr("c")));
        assert_eq!(ok("(a pr or b pr) and c pr"), and(or(pr("a"), pr("b")), pr("c")));
        assert_eq!(ok("a pr and (b pr and c pr)"), and(pr("a"), and(pr("b"), pr("c"))));
        assert_eq!(ok("not (a pr) and b pr"), and(not(pr("a")), pr("b")));
        assert_eq!(ok("((a pr))"), pr("a"));
        assert_eq!(ok("not(a pr)"), not(pr("a")));
    }

    #[test]
    fn filter_whitespace_tolerance() {
        assert_eq!(
            ok("  \ta  eq\t\"x\"   and  ( b pr )  "),
            and(cmp(ap("a"), CompareOp::Eq, s("x")), pr("b"))
        );
    }

    #[test]
    fn filter_keywords_as_attribute_names() {
        assert_eq!(ok("not eq 1"), cmp(ap("not"), CompareOp::Eq, CompValue::Num(1.into())));
        assert_eq!(ok("and pr and or pr"), and(pr("and"), pr("or")));
        assert_eq!(ok("pr pr"), pr("pr"));
        assert_eq!(ok("not[eq pr]"), vp("not", pr("eq")));
    }

    #[test]
    fn filter_rfc_examples_parse_and_round_trip() {
        let examples = [
            r#"userName Eq "john""#,
            r#"title pr"#,
            r#"name.familyName co "O'Malley""#,
            r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "J""#,
            r#"meta.lastModified gt "2011-05-13T04:42:34Z""#,
            r#"meta.lastModified ge "2011-05-13T04:42:34Z""#,
            r#"title pr and userType eq "Employee""#,
            r#"title pr or userType eq "Intern""#,
            r#"schemas eq "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User""#,
            r#"userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")"#,
            r#"userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")"#,
            r#"userType eq "Employee" and (emails.type eq "work")"#,
            r#"userType eq "Employee" and emails[type eq "work" and value co "@example.com"]"#,
            r#"emails[type eq "work" and value co "@example.com"] or ims[type eq "xmpp" and value co "@foo.com"]"#,
        ];
        for text in examples {
            assert_round_trip(&ok(text));
        }
        assert_eq!(
            ok(r#"emails[type eq "work" and value co "@example.com"]"#),
            vp(
                "emails",
                and(
                    cmp(ap("type"), CompareOp::Eq, s("work")),
                    cmp(ap("value"), CompareOp::Co, s("@example.com"))
                )
            )
        );
    }

    #[test]
    fn filter_value_path_with_urn() {
        let f = ok(&format!("{ENTERPRISE}:manager[value eq \"1\"]"));
        assert_eq!(
            f,
            Filter::ValuePath {
                path: AttrPath {
                    urn: Some(ENTERPRISE.into()),
                    attr: "manager".into(),
                    sub: None
                },
                filter: Box::new(cmp(ap("value"), CompareOp::Eq, s("1"))),
            }
        );
    }

    #[test]
    fn filter_entra_value_path_with_trailing_comparison() {
        let f = ok(r#"emails[type eq "work"].value eq "a@b.com""#);
        assert_eq!(
            f,
            vp(
                "emails",
                and(
                    cmp(ap("type"), CompareOp::Eq, s("work")),
                    cmp(ap("value"), CompareOp::Eq, s("a@b.com"))
                )
            )
        );
        assert_eq!(f.to_string(), r#"emails[type eq "work" and value eq "a@b.com"]"#);
        assert_eq!(
            ok(r#"emails[type eq "work"].value pr"#),
            vp("emails", and(cmp(ap("type"), CompareOp::Eq, s("work")), pr("value")))
        );
        // The folded comparison binds to the whole bracket filter.
        let f = ok(r#"emails[type eq "a" or type eq "b"].value eq x and active eq true"#);
        assert_eq!(
            f,
            and(
                vp(
                    "emails",
                    and(
                        or(
                            cmp(ap("type"), CompareOp::Eq, s("a")),
                            cmp(ap("type"), CompareOp::Eq, s("b"))
                        ),
                        cmp(ap("value"), CompareOp::Eq, s("x"))
                    )
                ),
                cmp(ap("active"), CompareOp::Eq, CompValue::Bool(true))
            )
        );
        assert_round_trip(&f);
    }

    // ----- values --------------------------------------------------------------

    #[test]
    fn filter_unquoted_values() {
        assert_eq!(
            ok("externalId eq jyoung"),
            cmp(ap("externalId"), CompareOp::Eq, s("jyoung"))
        );
        assert_eq!(
            ok("(externalId eq 5d2b-x) or a pr"),
            or(cmp(ap("externalId"), CompareOp::Eq, s("5d2b-x")), pr("a"))
        );
        assert_eq!(
            ok("emails[value eq a@b.com]"),
            vp("emails", cmp(ap("value"), CompareOp::Eq, s("a@b.com")))
        );
        // Not valid JSON numbers, so they stay strings.
        assert_eq!(ok("a eq 01"), cmp(ap("a"), CompareOp::Eq, s("01")));
        assert_eq!(ok("a eq 1."), cmp(ap("a"), CompareOp::Eq, s("1.")));
        assert_eq!(ok("a eq ünï"), cmp(ap("a"), CompareOp::Eq, s("ünï")));
        // Display quotes them.
        assert_eq!(ok("a eq jyoung").to_string(), r#"a eq "jyoung""#);
    }

    #[test]
    fn filter_numbers_booleans_null() {
        let num = |t: &str| match ok(&format!("a gt {t}")) {
            Filter::Compare {
                value: CompValue::Num(n),
                ..
            } => n,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(num("42"), serde_json::Number::from(42));
        assert_eq!(num("-3"), serde_json::Number::from(-3));
        assert_eq!(num("0"), serde_json::Number::from(0));
        assert_eq!(num("1.5").as_f64(), Some(1.5));
        assert_eq!(num("1e3").as_f64(), Some(1000.0));
        assert_eq!(num("-2.5E-3").as_f64(), Some(-0.0025));
        for (t, v) in [
            ("true", CompValue::Bool(true)),
            ("TRUE", CompValue::Bool(true)),
            ("False", CompValue::Bool(false)),
            ("null", CompValue::Null),
            ("NULL", CompValue::Null),
        ] {
            assert_eq!(ok(&format!("a eq {t}")), cmp(ap("a"), CompareOp::Eq, v));
        }
        assert_eq!(ok("a eq \"true\""), cmp(ap("a"), CompareOp::Eq, s("true")));
        syntax_err("a eq 1e999", 5);
    }

    #[test]
    fn filter_escaped_strings() {
        assert_eq!(
            ok(r#"a eq "say \"hi\" \\ \u00e9 \n""#),
            cmp(ap("a"), CompareOp::Eq, s("say \"hi\" \\ é \n"))
        );
        assert_eq!(
            ok(r#"a eq "日本 (x) [y] and""#),
            cmp(ap("a"), CompareOp::Eq, s("日本 (x) [y] and"))
        );
        assert_eq!(
            cmp(ap("a"), CompareOp::Eq, s("q\"b\\s\u{1}\t")).to_string(),
            r#"a eq "q\"b\\s\u0001\t""#
        );
        syntax_err(r#"a eq "abc"#, 5);
        syntax_err(r#"a eq "ab\"#, 5);
        syntax_err(r#"a eq "\x""#, 5);
        syntax_err("a eq \"a\u{1}\"", 5);
    }

    // ----- errors --------------------------------------------------------------

    #[test]
    fn filter_error_positions() {
        // Empty input.
        assert!(syntax_err("", 0).contains("end of input"));
        syntax_err("   ", 3);
        // Missing value.
        assert!(syntax_err("userName eq", 11).contains("expected a value"));
        syntax_err("userName eq )", 12);
        syntax_err("(userName eq)", 12);
        // Missing operator.
        syntax_err("userName", 8);
        // Unknown operator.
        assert!(syntax_err(r#"userName equals "x""#, 9).contains("unknown operator"));
        // Unbalanced parentheses and brackets.
        assert!(syntax_err("(userName pr", 12).contains("expected ')'"));
        assert!(syntax_err("userName pr)", 11).contains("unbalanced ')'"));
        syntax_err("((a pr)", 7);
        assert!(syntax_err("emails[type pr", 14).contains("expected ']'"));
        assert!(syntax_err("emails[type pr)", 14).contains("expected ']'"));
        assert!(syntax_err("type pr]", 7).contains("unbalanced ']'"));
        syntax_err("emails[type pr]]", 15);
        // Nested brackets.
        assert!(syntax_err("emails[type[x pr] pr]", 11).contains("nested"));
        // Brackets after a sub-attribute.
        syntax_err("name.x[y pr]", 6);
        // Trailing garbage.
        syntax_err("userName pr foo", 12);
        syntax_err(r#"userName eq "a" "b""#, 16);
        syntax_err("a pr andx b pr", 5);
        // `pr` with a value.
        assert!(syntax_err(r#"title pr "x""#, 9).contains("expected 'and', 'or'"));
        syntax_err("title pr 5", 9);
        // Dangling logical operator.
        syntax_err("a pr and", 8);
        syntax_err("a pr or ", 8);
        // `not` without parentheses.
        assert!(syntax_err(r#"not title eq "x""#, 4).contains("'not'"));
        syntax_err("not", 3);
        // Entra tail without a name or operator.
        syntax_err("emails[type pr].", 16);
        syntax_err("emails[type pr].value", 21);
        syntax_err("emails[type pr] .value pr", 16);
        // Value cannot start with a bracket.
        syntax_err("a eq (b)", 5);
    }

    #[test]
    fn filter_limits() {
        let limits = FilterLimits {
            max_len: 10,
            max_depth: 2,
        };
        assert_eq!(
            parse_filter("abcdefghijk pr", &limits),
            Err(FilterError::TooLong { len: 14, max: 10 })
        );
        assert_eq!(
            parse_patch_path("abcdefghijk", &limits),
            Err(FilterError::TooLong { len: 11, max: 10 })
        );
        // Length is counted in characters.
        assert!(parse_filter("a eq \"éé\"", &limits).is_ok());
        let limits = FilterLimits {
            max_len: 100,
            max_depth: 2,
        };
        assert!(parse_filter("((a pr))", &limits).is_ok());
        assert_eq!(
            parse_filter("(((a pr)))", &limits),
            Err(FilterError::TooDeep { max: 2 })
        );
        assert_eq!(
            parse_filter("not ((a pr))", &limits),
            Err(FilterError::TooDeep { max: 2 })
        );
        assert_eq!(
            parse_filter("x[not (a pr)]", &limits),
            Err(FilterError::TooDeep { max: 2 })
        );
        assert!(parse_filter("x[(a pr)]", &limits).is_ok());
    }

    #[test]
    fn filter_huge_nesting_does_not_overflow() {
        let n = 100_000;
        let text = format!("{}a eq 1{}", "(".repeat(n), ")".repeat(n));
        let unlimited_len = FilterLimits {
            max_len: usize::MAX,
            ..FilterLimits::default()
        };
        assert_eq!(
            parse_filter(&text, &unlimited_len),
            Err(FilterError::TooDeep { max: 16 })
        );
        // Even a careless configuration is capped.
        let careless = FilterLimits {
            max_len: usize::MAX,
            max_depth: usize::MAX,
        };
        assert_eq!(
            parse_filter(&text, &careless),
            Err(FilterError::TooDeep { max: HARD_MAX_DEPTH })
        );
        let nots = format!("{}a pr{}", "not (".repeat(n), ")".repeat(n));
        assert_eq!(
            parse_filter(&nots, &careless),
            Err(FilterError::TooDeep { max: HARD_MAX_DEPTH })
        );
        // With default limits the length check fires first.
        assert!(matches!(
            parse_filter(&text, &FilterLimits::default()),
            Err(FilterError::TooLong { .. })
        ));
    }

    // ----- display ---------------------------------------------------------------

    #[test]
    fn filter_display_is_canonical() {
        assert_eq!(
            ok(r#"userName EQ "john" AND NOT (title PR OR active eq TRUE)"#).to_string(),
            r#"userName eq "john" and not (title pr or active eq true)"#
        );
        assert_eq!(
            ok("(a pr or b pr) and (c pr and d pr)").to_string(),
            "(a pr or b pr) and (c pr and d pr)"
        );
        assert_eq!(ok("a pr or (b pr or c pr)").to_string(), "a pr or (b pr or c pr)");
        assert_eq!(
            ok("(a pr and b pr) or (c pr and d pr)").to_string(),
            "a pr and b pr or c pr and d pr"
        );
        assert_eq!(ok("a eq -1.5e3").to_string(), "a eq -1500.0");
        assert_eq!(ok("a eq null").to_string(), "a eq null");
    }

    // ----- PATCH paths -------------------------------------------------------

    #[test]
    fn patch_path_examples() {
        assert_eq!(
            path("members"),
            PatchPath {
                attr: ap("members"),
                filter: None,
                sub: None
            }
        );
        assert_eq!(
            path("name.familyName"),
            PatchPath {
                attr: ap_sub("name", "familyName"),
                filter: None,
                sub: None
            }
        );
        assert_eq!(
            path(r#"emails[type eq "work"].value"#),
            PatchPath {
                attr: ap("emails"),
                filter: Some(cmp(ap("type"), CompareOp::Eq, s("work"))),
                sub: Some("value".into())
            }
        );
        assert_eq!(
            path(r#"members[value eq "2819c223"]"#),
            PatchPath {
                attr: ap("members"),
                filter: Some(cmp(ap("value"), CompareOp::Eq, s("2819c223"))),
                sub: None
            }
        );
        assert_eq!(
            path(&format!("{ENTERPRISE}:employeeNumber")),
            PatchPath {
                attr: AttrPath {
                    urn: Some(ENTERPRISE.into()),
                    attr: "employeeNumber".into(),
                    sub: None
                },
                filter: None,
                sub: None
            }
        );
        assert_eq!(
            path(&format!("{ENTERPRISE}:manager.value")),
            PatchPath {
                attr: AttrPath {
                    urn: Some(ENTERPRISE.into()),
                    attr: "manager".into(),
                    sub: Some("value".into())
                },
                filter: None,
                sub: None
            }
        );
        assert_eq!(
            path(r#" addresses[type eq "work"].streetAddress "#),
            PatchPath {
                attr: ap("addresses"),
                filter: Some(cmp(ap("type"), CompareOp::Eq, s("work"))),
                sub: Some("streetAddress".into())
            }
        );
        assert_eq!(
            path(r#"members[value eq "a" or value eq "b"]"#).to_string(),
            r#"members[value eq "a" or value eq "b"]"#
        );
    }

    #[test]
    fn patch_path_errors() {
        let err = |s: &str| parse_patch_path(s, &FilterLimits::default());
        let pos = |s: &str| match err(s) {
            Err(FilterError::Syntax { pos, .. }) => pos,
            other => panic!("{s:?}: {other:?}"),
        };
        assert_eq!(pos(""), 0);
        assert_eq!(pos("members extra"), 8);
        assert_eq!(pos("members["), 8);
        assert_eq!(pos("members[value pr"), 16);
        assert_eq!(pos("members[value pr]."), 18);
        assert_eq!(pos("members[value pr].a.b"), 19);
        assert_eq!(pos("name.x[value pr]"), 6);
        assert_eq!(pos("members[value[x pr]]"), 13);
        assert_eq!(pos("a.b.c"), 3);
        assert_eq!(pos("members)"), 7);
    }

    // ----- property tests ------------------------------------------------------

    fn name_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("userName"),
            Just("emails"),
            Just("value"),
            Just("type"),
            Just("$ref"),
            Just("givenName"),
            Just("x-y_z9"),
            Just("A"),
            Just("not"),
            Just("and"),
            Just("or"),
            Just("pr"),
            Just("eq"),
            Just("true"),
            Just("urn"),
        ]
        .prop_map(String::from)
    }

    fn urn_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("urn:ietf:params:scim:schemas:core:2.0:User"),
            Just("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"),
            Just("URN:x:y"),
        ]
        .prop_map(String::from)
    }

    fn attr_path_strategy() -> impl Strategy<Value = AttrPath> {
        (
            prop::option::of(urn_strategy()),
            name_strategy(),
            prop::option::of(name_strategy()),
        )
            .prop_map(|(urn, attr, sub)| AttrPath { urn, attr, sub })
    }

    fn plain_path_strategy() -> impl Strategy<Value = AttrPath> {
        name_strategy().prop_map(|attr| AttrPath {
            urn: None,
            attr,
            sub: None,
        })
    }

    /// Floats that survive a trip through serde_json's text form.
    fn float_strategy() -> impl Strategy<Value = serde_json::Number> {
        (any::<i32>(), 0i32..25, any::<bool>()).prop_filter_map("not round-trippable", |(m, k, big)| {
            let scale = 10f64.powi(k);
            let v = if big {
                f64::from(m) * scale
            } else {
                f64::from(m) / scale
            };
            let n = serde_json::Number::from_f64(v)?;
            let back: serde_json::Number = serde_json::from_str(&n.to_string()).ok()?;
            (back == n).then_some(n)
        })
    }

    fn value_strategy() -> impl Strategy<Value = CompValue> {
        prop_oneof![
            any::<String>().prop_map(CompValue::Str),
            "[a-z\"\\\\ ()\\[\\]\t\n\u{0}-\u{1f}é日]{0,8}".prop_map(CompValue::Str),
            any::<i64>().prop_map(|n| CompValue::Num(n.into())),
            any::<u64>().prop_map(|n| CompValue::Num(n.into())),
            float_strategy().prop_map(CompValue::Num),
            any::<bool>().prop_map(CompValue::Bool),
            Just(CompValue::Null),
        ]
    }

    fn op_strategy() -> impl Strategy<Value = CompareOp> {
        prop::sample::select(CompareOp::ALL.to_vec())
    }

    /// Filters over `paths`; with `value_paths`, leaves may be value paths
    /// whose inner filters use plain names only.
    fn filter_strategy(paths: BoxedStrategy<AttrPath>, value_paths: bool) -> BoxedStrategy<Filter> {
        let compare = (paths.clone(), op_strategy(), value_strategy()).prop_map(|(path, op, value)| Filter::Compare {
            path,
            op,
            value,
        });
        let present = paths.prop_map(Filter::Present);
        let leaf = if value_paths {
            let inner = filter_strategy(plain_path_strategy().boxed(), false);
            let value_path =
                (prop::option::of(urn_strategy()), name_strategy(), inner).prop_map(|(urn, attr, filter)| {
                    Filter::ValuePath {
                        path: AttrPath { urn, attr, sub: None },
                        filter: Box::new(filter),
                    }
                });
            prop_oneof![compare, present, value_path].boxed()
        } else {
            prop_oneof![compare, present].boxed()
        };
        leaf.prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(l, r)| Filter::And(Box::new(l), Box::new(r))),
                (inner.clone(), inner.clone()).prop_map(|(l, r)| Filter::Or(Box::new(l), Box::new(r))),
                inner.prop_map(|f| Filter::Not(Box::new(f))),
            ]
        })
        .boxed()
    }

    fn patch_path_strategy() -> impl Strategy<Value = PatchPath> {
        let plain = attr_path_strategy().prop_map(|attr| PatchPath {
            attr,
            filter: None,
            sub: None,
        });
        let filtered = (
            prop::option::of(urn_strategy()),
            name_strategy(),
            filter_strategy(plain_path_strategy().boxed(), false),
            prop::option::of(name_strategy()),
        )
            .prop_map(|(urn, attr, filter, sub)| PatchPath {
                attr: AttrPath { urn, attr, sub: None },
                filter: Some(filter),
                sub,
            });
        prop_oneof![plain, filtered]
    }

    fn filterish_text() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("(".to_owned()),
            Just(")".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just(" and ".to_owned()),
            Just(" or ".to_owned()),
            Just("not ".to_owned()),
            Just(" eq ".to_owned()),
            Just(" pr".to_owned()),
            Just(".".to_owned()),
            Just(":".to_owned()),
            Just("urn:".to_owned()),
            Just(" ".to_owned()),
            Just("1e5".to_owned()),
            Just("-".to_owned()),
            Just("$".to_owned()),
            "[a-zA-Z]{1,4}",
            any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(token, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn filter_prop_never_panics_on_arbitrary_text(input in any::<String>()) {
            let _ = parse_filter(&input, &FilterLimits::default());
            let _ = parse_patch_path(&input, &FilterLimits::default());
        }

        #[test]
        fn filter_prop_never_panics_on_filterish_text(input in filterish_text()) {
            let _ = parse_filter(&input, &FilterLimits::default());
            let _ = parse_patch_path(&input, &FilterLimits::default());
            // Whatever parses must print back to the same tree.
            if let Ok(f) = parse_filter(&input, &FilterLimits::default()) {
                assert_round_trip(&f);
            }
            if let Ok(p) = parse_patch_path(&input, &FilterLimits::default()) {
                prop_assert_eq!(
                    parse_patch_path(&p.to_string(), &FilterLimits::default()),
                    Ok(p)
                );
            }
        }

        #[test]
        fn filter_prop_round_trip(
            f in filter_strategy(attr_path_strategy().boxed(), true)
        ) {
            let text = f.to_string();
            let limits = FilterLimits { max_len: usize::MAX, max_depth: 64 };
            prop_assert_eq!(parse_filter(&text, &limits), Ok(f), "text: {}", text);
        }

        #[test]
        fn filter_prop_patch_path_round_trip(p in patch_path_strategy()) {
            let text = p.to_string();
            let limits = FilterLimits { max_len: usize::MAX, max_depth: 64 };
            prop_assert_eq!(parse_patch_path(&text, &limits), Ok(p), "text: {}", text);
        }

        #[test]
        fn filter_prop_deep_nesting_is_too_deep(max_depth in 0usize..40, extra in 1usize..200) {
            let n = max_depth + extra;
            let text = format!("{}a eq 1{}", "(".repeat(n), ")".repeat(n));
            let limits = FilterLimits { max_len: usize::MAX, max_depth };
            prop_assert_eq!(
                parse_filter(&text, &limits),
                Err(FilterError::TooDeep { max: max_depth })
            );
            // Exactly at the limit is fine.
            let text = format!("{}a eq 1{}", "(".repeat(max_depth), ")".repeat(max_depth));
            prop_assert!(parse_filter(&text, &limits).is_ok());
        }

        #[test]
        fn filter_prop_too_long(max_len in 0usize..200, extra in 1usize..50, c in any::<char>()) {
            let input: String = std::iter::repeat_n(c, max_len + extra).collect();
            let limits = FilterLimits { max_len, max_depth: 16 };
            let expected = Err(FilterError::TooLong { len: max_len + extra, max: max_len });
            prop_assert_eq!(parse_filter(&input, &limits), expected.clone());
            prop_assert_eq!(parse_patch_path(&input, &limits).map(|_| ()), expected.map(|_: Filter| ()));
        }
    }
}
