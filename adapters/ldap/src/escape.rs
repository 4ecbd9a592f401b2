//! RFC 4514 (distinguished names) and RFC 4515 (search filters) escaping, and a small DN parser used to compare
//! DNs the way a directory does (attribute types and values case-insensitively, escapes decoded).
//!
//! Every value that comes from a SCIM user and ends up in a DN or a filter passes through [`dn_value`] or
//! [`filter_value`]; nothing is ever spliced in raw.

/// Escape one attribute value for use in an RDN (RFC 4514 section 2.4).
///
/// `"` `+` `,` `;` `<` `>` `\` `=` are escaped with a backslash, NUL as `\00`, a leading `#` or space and a
/// trailing space with a backslash. Other characters (UTF-8 included) pass unchanged.
pub fn dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '\0' => out.push_str("\\00"),
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c => out.push(c),
        }
    }
    out
}

/// Escape an assertion value for a search filter (RFC 4515 section 3): `*` `(` `)` `\` and NUL become `\2a`
/// `\28` `\29` `\5c` `\00`.
pub fn filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// Escape raw bytes (a binary value such as `objectGUID`) for a filter: every byte as `\xx`.
pub fn filter_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// One attribute type and value of an RDN, the value with its escapes decoded.
pub type Ava = (String, String);

/// A parsed DN: RDNs from the leaf up, each a list of AVAs (more than one for a multi-valued RDN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dn(pub Vec<Vec<Ava>>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a DN: {0}")]
pub struct DnError(pub String);

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Dn {
    /// Parse an RFC 4514 string. Escapes (`\,` and `\2C`) are decoded; a `#hex` BER value is kept as written.
    pub fn parse(text: &str) -> Result<Dn, DnError> {
        let bad = |why: &str| DnError(format!("{text:?}: {why}"));
        let b = text.as_bytes();
        let mut rdns = Vec::new();
        let mut rdn = Vec::new();
        let mut i = 0;
        if text.trim().is_empty() {
            return Ok(Dn(rdns));
        }
        loop {
            // attribute type
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            let start = i;
            while i < b.len() && b[i] != b'=' {
                if matches!(b[i], b',' | b'+' | b'\\') {
                    return Err(bad("an attribute type holds a special character"));
                }
                i += 1;
            }
            if i >= b.len() {
                return Err(bad("an RDN without ="));
            }
            let attr = text[start..i].trim().to_string();
            if attr.is_empty() {
                return Err(bad("an empty attribute type"));
            }
            i += 1;
            // value
            let mut val: Vec<u8> = Vec::new();
            // Trailing unescaped spaces are not part of the value.
            let mut significant = 0;
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            while i < b.len() && b[i] != b',' && b[i] != b'+' && b[i] != b';' {
                if b[i] == b'\\' {
                    let Some(&n) = b.get(i + 1) else {
                        return Err(bad("a trailing backslash"));
                    };
                    if let (Some(h), Some(l)) = (hex(n), b.get(i + 2).and_then(|&x| hex(x))) {
                        val.push(h << 4 | l);
                        i += 3;
                    } else {
                        val.push(n);
                        i += 2;
                    }
                    significant = val.len();
                } else {
                    val.push(b[i]);
                    if b[i] != b' ' {
                        significant = val.len();
                    }
                    i += 1;
                }
            }
            val.truncate(significant);
            let val = String::from_utf8(val).map_err(|_| bad("a value is not UTF-8"))?;
            rdn.push((attr, val));
            if i >= b.len() {
                rdns.push(std::mem::take(&mut rdn));
                break;
            }
            if b[i] != b'+' {
                rdns.push(std::mem::take(&mut rdn));
            }
            i += 1;
        }
        Ok(Dn(rdns))
    }

    /// A canonical form for comparisons: types and values lowercased, the AVAs of an RDN sorted, every value
    /// escaped the same way.
    pub fn canonical(&self) -> String {
        self.0
            .iter()
            .map(|rdn| {
                let mut avas: Vec<String> = rdn
                    .iter()
                    .map(|(a, v)| format!("{}={}", a.to_lowercase(), dn_value(&v.to_lowercase())))
                    .collect();
                avas.sort();
                avas.join("+")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The first value of the leaf RDN.
    pub fn leaf(&self) -> Option<&Ava> {
        self.0.first().and_then(|r| r.first())
    }
}

/// The canonical form of `dn` for comparisons; a string that does not parse compares as itself, lowercased.
pub fn canonical(dn: &str) -> String {
    Dn::parse(dn)
        .map(|d| d.canonical())
        .unwrap_or_else(|_| dn.to_lowercase())
}

/// Whether two DNs name the same entry.
pub fn same_dn(a: &str, b: &str) -> bool {
    canonical(a) == canonical(b)
}

/// Split a DN string at its first unescaped comma: the leaf RDN and the parent DN (empty for a one-RDN DN).
pub fn split_leaf(dn: &str) -> (&str, &str) {
    let b = dn.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b',' => return (&dn[..i], dn[i + 1..].trim_start()),
            _ => i += 1,
        }
    }
    (dn, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_issue_user_name_escapes() {
        let v = "a,b=c*(\\)";
        assert_eq!(dn_value(v), "a\\,b\\=c*(\\\\)");
        assert_eq!(filter_value(v), "a,b=c\\2a\\28\\5c\\29");
        let dn = format!("uid={},ou=people,dc=x", dn_value(v));
        let p = Dn::parse(&dn).expect("parse");
        assert_eq!(p.0.len(), 3);
        assert_eq!(p.leaf(), Some(&("uid".to_string(), v.to_string())));
        assert_eq!(split_leaf(&dn), ("uid=a\\,b\\=c*(\\\\)", "ou=people,dc=x"));
    }

    #[test]
    fn leading_and_trailing_specials() {
        assert_eq!(dn_value(" #a# "), "\\ #a#\\ ");
        assert_eq!(dn_value("#a"), "\\#a");
        assert_eq!(dn_value(" "), "\\ ");
        assert_eq!(dn_value("a\0b"), "a\\00b");
        assert_eq!(filter_value("a\0b"), "a\\00b");
        assert_eq!(filter_bytes(&[0, 0xab, 0x2a]), "\\00\\ab\\2a");
    }

    #[test]
    fn canonical_forms_agree() {
        assert!(same_dn("UID=a\\2Cb, OU=People,dc=X", "uid=a\\,b,ou=people,DC=x"));
        assert!(same_dn("cn=a+sn=b,dc=x", "sn=B+cn=A,dc=x"));
        assert!(!same_dn("uid=a,dc=x", "uid=b,dc=x"));
        assert!(Dn::parse("uid=a\\").is_err());
        assert!(Dn::parse("noequals").is_err());
    }

    proptest! {
        #[test]
        fn dn_values_round_trip(v in "\\PC{0,24}|[ #,+\"\\\\<>;=*()\0a-c]{0,16}") {
            let dn = format!("cn={},ou=x,dc=y", dn_value(&v));
            let p = Dn::parse(&dn).expect("parse");
            // Exactly three RDNs: the value could not split the DN or add an AVA.
            prop_assert_eq!(p.0.len(), 3);
            prop_assert_eq!(p.0[0].len(), 1);
            prop_assert_eq!(&p.0[0][0].1, &v);
            prop_assert_eq!(split_leaf(&dn).1, "ou=x,dc=y");
        }

        #[test]
        fn filter_values_never_inject(v in "\\PC{0,24}|[ ()*\\\\&|!=<>~\0a-c]{0,16}") {
            let e = filter_value(&v);
            prop_assert!(!e.contains('(') && !e.contains(')') && !e.contains('*') && !e.contains('\0'));
            // Every backslash starts a two-hex-digit escape, and decoding gives the value back.
            let b = e.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\' {
                    let h = hex(b[i + 1]).expect("hex");
                    let l = hex(b[i + 2]).expect("hex");
                    out.push(h << 4 | l);
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            prop_assert_eq!(String::from_utf8(out).expect("utf8"), v.clone());
            // ldap3's own filter parser accepts it as one equality assertion.
            let f = format!("(&(objectClass=x)(uid={e}))");
            prop_assert!(ldap3::parse_filter(&f).is_ok());
        }
    }
}
