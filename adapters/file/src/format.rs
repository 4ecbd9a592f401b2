//! The CSV dialect: formula neutralisation, encoding, writing and reading rows.

use scimgate_adapter_sdk::AdapterError;

use crate::config::{Config, Encoding, LineEnding, QuoteStyle, Unmappable};

/// Characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection": `=`, `+`, `-`, `@`, and
/// tab and carriage return, which some importers strip before looking).
const TRIGGERS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

fn needs_quote_mark(cell: &str) -> bool {
    cell.trim_start_matches('\'').starts_with(TRIGGERS)
}

/// A cell that a spreadsheet would run as a formula gets a leading `'`, which makes it text. So that reading
/// back is exact, a cell that already starts with `'`s followed by a trigger (`'=x`) gets one more.
pub fn neutralise(cell: &str) -> String {
    if needs_quote_mark(cell) {
        format!("'{cell}")
    } else {
        cell.to_string()
    }
}

/// The value a stored cell stands for (the inverse of [`neutralise`]).
pub fn unneutralise(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if needs_quote_mark(rest) => rest,
        _ => cell,
    }
}

/// How rows become bytes and back.
#[derive(Debug, Clone)]
pub struct Dialect {
    delimiter: u8,
    quote: u8,
    always_quote: bool,
    crlf: bool,
    encoding: Encoding,
    unmappable: Unmappable,
}

fn ascii_byte(c: char, what: &str) -> Result<u8, AdapterError> {
    match u8::try_from(c) {
        Ok(b) if b.is_ascii() && !b.is_ascii_alphanumeric() && b != b'\n' && b != b'\r' => Ok(b),
        _ => Err(AdapterError::config(format!(
            "{what} {c:?} must be one ASCII punctuation, space or tab character"
        ))),
    }
}

impl Dialect {
    pub fn new(c: &Config) -> Result<Dialect, AdapterError> {
        let delimiter = ascii_byte(c.delimiter, "delimiter")?;
        let quote = ascii_byte(c.quote, "quote")?;
        if delimiter == quote {
            return Err(AdapterError::config("delimiter and quote must differ"));
        }
        Ok(Dialect {
            delimiter,
            quote,
            always_quote: c.quote_style == QuoteStyle::Always,
            crlf: c.line_ending == LineEnding::Crlf,
            encoding: c.encoding,
            unmappable: c.unmappable,
        })
    }

    /// The cell as it is stored: neutralised, and with every character the encoding can represent (or the
    /// change is refused, or the character replaced with `?`, as configured).
    pub fn cell(&self, column: &str, value: &str) -> Result<String, AdapterError> {
        let v = neutralise(value);
        if self.encoding != Encoding::Windows1252 || representable(&v) {
            return Ok(v);
        }
        match self.unmappable {
            Unmappable::Reject => Err(AdapterError::rejected(format!(
                "column {column}: the value holds a character windows-1252 cannot represent"
            ))),
            Unmappable::Replace => Ok(v
                .chars()
                .map(|ch| {
                    if representable(ch.encode_utf8(&mut [0; 4])) {
                        ch
                    } else {
                        '?'
                    }
                })
                .collect()),
        }
    }

    /// A whole file: an optional header, then the rows (cells already passed through [`Dialect::cell`]).
    pub fn write(&self, header: Option<&[String]>, rows: &[Vec<String>]) -> Result<Vec<u8>, AdapterError> {
        let mut w = csv::WriterBuilder::new()
            .delimiter(self.delimiter)
            .quote(self.quote)
            .double_quote(true)
            .quote_style(if self.always_quote {
                csv::QuoteStyle::Always
            } else {
                csv::QuoteStyle::Necessary
            })
            .terminator(if self.crlf {
                csv::Terminator::CRLF
            } else {
                csv::Terminator::Any(b'\n')
            })
            .from_writer(Vec::new());
        let fail = |e: csv::Error| AdapterError::rejected(format!("cannot write CSV: {e}"));
        if let Some(h) = header {
            w.write_record(h).map_err(fail)?;
        }
        for r in rows {
            w.write_record(r).map_err(fail)?;
        }
        let text = w
            .into_inner()
            .map_err(|e| AdapterError::rejected(format!("cannot write CSV: {e}")))?;
        let text = String::from_utf8(text).map_err(|_| AdapterError::rejected("CSV output is not UTF-8"))?;
        self.encode(&text)
    }

    fn encode(&self, text: &str) -> Result<Vec<u8>, AdapterError> {
        match self.encoding {
            Encoding::Utf8 => Ok(text.as_bytes().to_vec()),
            Encoding::Utf8Bom => {
                let mut out = vec![0xEF, 0xBB, 0xBF];
                out.extend_from_slice(text.as_bytes());
                Ok(out)
            }
            Encoding::Windows1252 => {
                let (bytes, _, errors) = encoding_rs::WINDOWS_1252.encode(text);
                if errors {
                    // Cells were checked one by one; a header (column names) is the only other text.
                    return Err(AdapterError::config(
                        "a column name holds a character windows-1252 cannot represent",
                    ));
                }
                Ok(bytes.into_owned())
            }
        }
    }

    /// Every record of a file, the header included, as stored (still neutralised).
    pub fn read(&self, bytes: &[u8]) -> Result<Vec<Vec<String>>, AdapterError> {
        let text = match self.encoding {
            Encoding::Utf8 | Encoding::Utf8Bom => {
                let b = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF][..]).unwrap_or(bytes);
                std::str::from_utf8(b)
                    .map_err(|_| AdapterError::config("the population file is not valid UTF-8"))?
                    .to_string()
            }
            Encoding::Windows1252 => encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
                .into_owned(),
        };
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(false)
            .delimiter(self.delimiter)
            .quote(self.quote)
            .double_quote(true)
            .from_reader(text.as_bytes());
        let mut out = Vec::new();
        for rec in r.records() {
            let rec = rec.map_err(|e| AdapterError::config(format!("the population file is not valid CSV: {e}")))?;
            out.push(rec.iter().map(str::to_string).collect());
        }
        Ok(out)
    }
}

fn representable(s: &str) -> bool {
    !encoding_rs::WINDOWS_1252.encode(s).2
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dialect(extra: &str) -> Dialect {
        let c: Config = toml::from_str(&format!(
            "key_column = \"id\"\ncolumns = [{{ name = \"id\", source = \"id\" }}]\n{extra}\n\
             [destination]\ntype = \"local\"\ndir = \"/tmp\"\n"
        ))
        .expect("config");
        Dialect::new(&c).expect("dialect")
    }

    #[test]
    fn formulas_are_neutralised() {
        for (v, want) in [
            ("=1+1", "'=1+1"),
            ("+49 30", "'+49 30"),
            ("-2", "'-2"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=x", "'\t=x"),
            ("\r=x", "'\r=x"),
            ("ada", "ada"),
            ("a=b", "a=b"),
            ("", ""),
            ("'=x", "''=x"),
            ("'x", "'x"),
        ] {
            assert_eq!(neutralise(v), want);
            assert_eq!(unneutralise(&neutralise(v)), v);
        }
    }

    #[test]
    fn a_cell_round_trips_with_quotes_delimiters_and_newlines() {
        let d = dialect("delimiter = \";\"\nquote_style = \"always\"\nline_ending = \"crlf\"");
        let row = vec!["a,b=c*(\\)+\"<>;'#".to_string(), "x\ny".to_string()];
        let bytes = d
            .write(Some(&["h1".into(), "h2".into()]), std::slice::from_ref(&row))
            .expect("write");
        assert!(bytes.starts_with(b"\"h1\";\"h2\"\r\n"));
        assert_eq!(
            d.read(&bytes).expect("read"),
            vec![vec!["h1".to_string(), "h2".to_string()], row]
        );
    }

    #[test]
    fn windows_1252_bytes_and_unmappable_characters() {
        let d = dialect("encoding = \"latin1\"");
        let cell = d.cell("n", "Zoë €").expect("cell");
        let bytes = d.write(None, &[vec![cell]]).expect("write");
        assert_eq!(bytes, b"Zo\xEB \x80\n");
        assert_eq!(d.read(&bytes).expect("read"), vec![vec!["Zoë €".to_string()]]);
        let e = d.cell("n", "Łukasz").expect_err("refused");
        assert_eq!(e.kind, scimgate_adapter_sdk::ErrorKind::Rejected);
        assert!(!e.retriable);
        let d = dialect("encoding = \"latin1\"\nunmappable = \"replace\"");
        assert_eq!(d.cell("n", "Łukasz").expect("cell"), "?ukasz");
    }

    #[test]
    fn utf8_bom_is_written_and_skipped() {
        let d = dialect("encoding = \"utf-8-bom\"");
        let bytes = d.write(None, &[vec!["ü".into()]]).expect("write");
        assert_eq!(bytes, "\u{feff}ü\n".as_bytes());
        assert_eq!(d.read(&bytes).expect("read"), vec![vec!["ü".to_string()]]);
    }

    proptest! {
        #[test]
        fn no_stored_cell_starts_a_formula(v in "\\PC{0,20}") {
            let n = neutralise(&v);
            prop_assert!(!n.starts_with(TRIGGERS));
            prop_assert_eq!(unneutralise(&n), v.as_str());
        }

        #[test]
        fn rows_round_trip(cells in proptest::collection::vec("\\PC{0,12}", 1..5)) {
            let d = dialect("");
            let row: Vec<String> = cells.iter().map(|c| d.cell("c", c).expect("cell")).collect();
            let bytes = d.write(None, std::slice::from_ref(&row)).expect("write");
            let back = d.read(&bytes).expect("read");
            // A single empty cell is written as an empty line, which CSV readers skip.
            if !(row.len() == 1 && row[0].is_empty()) {
                prop_assert_eq!(back, vec![row]);
            }
        }
    }
}
