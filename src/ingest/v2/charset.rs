//! Turning a message's bytes into text: the sender's configured character set, then MSH-18,
//! then UTF-8, then the configured fallback (windows-1252 unless set).
//!
//! Done here because `hl7-parser` takes `&str` only. The rule, in order:
//!
//! 0. `HL7BRIDGE_MLLP_CHARSETS` names a character set for the sender (MSH-3/MSH-4): use it,
//!    whatever MSH-18 says. It is for senders whose MSH-18 is wrong or missing and whose
//!    bytes would be misread by the rules below (an 8859/2 sender that declares nothing).
//! 1. MSH-18 names a multi-byte character set (UTF-8, GB 18030, KS X 1001, BIG-5, ISO IR87)
//!    and the bytes are valid in it: use it.
//! 2. The bytes are valid UTF-8: use UTF-8. This wins over a declared single-byte set
//!    (`8859/1`), because senders often declare 8859/1 and send UTF-8, and Latin-1 text that
//!    happens to form valid multi-byte UTF-8 is vanishingly rare; `declared_mismatch` records it.
//! 3. MSH-18 names a single-byte set (`8859/n`): use it.
//! 4. Otherwise the fallback, `HL7BRIDGE_MLLP_FALLBACK_CHARSET`: by default Latin-1, decoded
//!    as windows-1252 as browsers do, so that 0x80-0x9F give the characters senders mean (0x96
//!    is an en dash) rather than C1 control characters.
//!
//! Which one was used is kept with the message ([`Charset`]) and recorded on its span.

use encoding_rs::Encoding;

/// How a message's bytes were decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charset {
    /// The encoding used (`"UTF-8"`, `"windows-1252"`, `"ISO-8859-2"`, ...).
    pub encoding: &'static str,
    pub source: CharsetSource,
    /// MSH-18 named a character set that the non-ASCII bytes were not decoded with.
    pub declared_mismatch: bool,
}

/// Why that encoding was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharsetSource {
    /// MSH-18 named it.
    Msh18,
    /// The bytes were valid UTF-8 (pure ASCII included).
    Utf8Valid,
    /// `HL7BRIDGE_MLLP_CHARSETS` names it for the sender.
    Sender,
    /// Nothing else fitted: the fallback (windows-1252 unless configured).
    Fallback,
}

impl CharsetSource {
    pub fn as_str(&self) -> &'static str {
        match self {
            CharsetSource::Msh18 => "MSH-18",
            CharsetSource::Utf8Valid => "valid UTF-8",
            CharsetSource::Sender => "sender setting",
            CharsetSource::Fallback => "fallback",
        }
    }
}

/// The configured part of the rule: character sets by sender, and the fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharsetRules {
    /// (application, facility, encoding): MSH-3 and MSH-4 namespace ids, `*` for any.
    by_sender: Vec<(String, String, &'static Encoding)>,
    fallback: &'static Encoding,
}

impl Default for CharsetRules {
    fn default() -> Self {
        CharsetRules {
            by_sender: Vec::new(),
            fallback: encoding_rs::WINDOWS_1252,
        }
    }
}

/// A character set by its HL7 table 0211 name (`8859/2`, `UNICODE UTF-8`) or its WHATWG
/// label (`windows-1250`, `iso-8859-2`, `utf-8`).
pub fn encoding_named(name: &str) -> Option<&'static Encoding> {
    declared_encoding(name).or_else(|| Encoding::for_label(name.trim().as_bytes()))
}

impl CharsetRules {
    /// Reads `HL7BRIDGE_MLLP_CHARSETS` (`application^facility=charset`, `;`-separated, `*`
    /// for any application or facility) and `HL7BRIDGE_MLLP_FALLBACK_CHARSET`. Every problem
    /// is reported.
    pub fn parse(by_sender: Option<&str>, fallback: Option<&str>) -> Result<Self, Vec<String>> {
        let mut rules = CharsetRules::default();
        let mut problems = Vec::new();
        if let Some(name) = fallback {
            match encoding_named(name) {
                // A multi-byte fallback could fail on the bytes that reach it.
                Some(e) if e.is_single_byte() => rules.fallback = e,
                Some(_) => problems.push(format!(
                    "fallback {name:?}: must be a single-byte character set"
                )),
                None => problems.push(format!("fallback {name:?}: not a character set")),
            }
        }
        for entry in by_sender
            .unwrap_or("")
            .split(';')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let parsed = entry.split_once('=').and_then(|(sender, charset)| {
                let (application, facility) = sender.split_once('^')?;
                Some((application.trim(), facility.trim(), charset.trim()))
            });
            match parsed {
                None => problems.push(format!("{entry:?}: expected application^facility=charset")),
                Some((application, facility, charset)) => match encoding_named(charset) {
                    Some(e) => rules
                        .by_sender
                        .push((application.into(), facility.into(), e)),
                    None => problems.push(format!("{entry:?}: {charset:?} is not a character set")),
                },
            }
        }
        if problems.is_empty() {
            Ok(rules)
        } else {
            Err(problems)
        }
    }

    /// Whether any sender has a character set of its own.
    pub(crate) fn has_sender_rules(&self) -> bool {
        !self.by_sender.is_empty()
    }

    /// The character set configured for a sender (MSH-3 and MSH-4 namespace ids).
    fn for_sender(&self, application: &str, facility: &str) -> Option<&'static Encoding> {
        let fits = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        self.by_sender
            .iter()
            .find(|(a, f, _)| fits(a, application) && fits(f, facility))
            .map(|(_, _, e)| *e)
    }
}

/// HL7 table 0211 names and the WHATWG label of the matching encoding.
/// `ASCII` is absent on purpose: ASCII bytes read the same under every rule below.
const TABLE_0211: &[(&str, &str)] = &[
    ("UNICODE UTF-8", "utf-8"),
    ("8859/1", "iso-8859-1"),
    ("8859/2", "iso-8859-2"),
    ("8859/3", "iso-8859-3"),
    ("8859/4", "iso-8859-4"),
    ("8859/5", "iso-8859-5"),
    ("8859/6", "iso-8859-6"),
    ("8859/7", "iso-8859-7"),
    ("8859/8", "iso-8859-8"),
    ("8859/9", "iso-8859-9"),
    ("8859/15", "iso-8859-15"),
    ("ISO IR100", "iso-8859-1"),
    ("ISO IR87", "iso-2022-jp"),
    ("GB 18030-2000", "gb18030"),
    ("KS X 1001", "euc-kr"),
    ("BIG-5", "big5"),
];

/// The encoding MSH-18 (its first repetition) names, when this module can decode it.
pub(crate) fn declared_encoding(msh_18: &str) -> Option<&'static Encoding> {
    let name = msh_18.trim();
    TABLE_0211
        .iter()
        .find(|(hl7, _)| hl7.eq_ignore_ascii_case(name))
        .and_then(|(_, label)| Encoding::for_label(label.as_bytes()))
}

/// Decodes one message's bytes; `msh_18` is the character set it declares, if any, and
/// `sender` its MSH-3 and MSH-4 namespace ids.
pub(crate) fn decode(
    bytes: &[u8],
    msh_18: Option<&str>,
    sender: Option<(&str, &str)>,
    rules: &CharsetRules,
) -> (String, Charset) {
    let declared = msh_18.and_then(declared_encoding);
    let charset = |encoding: &'static Encoding, source| Charset {
        encoding: encoding.name(),
        source,
        declared_mismatch: declared.is_some_and(|d| d != encoding) && !bytes.is_ascii(),
    };
    if let Some(encoding) = sender.and_then(|(a, f)| rules.for_sender(a, f)) {
        let text = encoding.decode_without_bom_handling(bytes).0.into_owned();
        return (text, charset(encoding, CharsetSource::Sender));
    }
    if let Some(encoding) = declared.filter(|e| !e.is_single_byte()) {
        if let Some(text) = encoding.decode_without_bom_handling_and_without_replacement(bytes) {
            return (text.into_owned(), charset(encoding, CharsetSource::Msh18));
        }
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let source = match declared {
            Some(e) if e == encoding_rs::UTF_8 => CharsetSource::Msh18,
            _ => CharsetSource::Utf8Valid,
        };
        return (text.to_owned(), charset(encoding_rs::UTF_8, source));
    }
    if let Some(encoding) = declared.filter(|e| e.is_single_byte()) {
        let text = encoding.decode_without_bom_handling(bytes).0.into_owned();
        return (text, charset(encoding, CharsetSource::Msh18));
    }
    let text = rules
        .fallback
        .decode_without_bom_handling(bytes)
        .0
        .into_owned();
    (text, charset(rules.fallback, CharsetSource::Fallback))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_0211_entry_names_an_encoding() {
        for (hl7, _) in TABLE_0211 {
            assert!(declared_encoding(hl7).is_some(), "{hl7}");
        }
        assert_eq!(
            declared_encoding(" unicode utf-8 "),
            Some(encoding_rs::UTF_8)
        );
        assert_eq!(declared_encoding("ASCII"), None);
        assert_eq!(declared_encoding("UNICODE UTF-16"), None);
    }

    #[test]
    fn ascii_is_read_as_utf8() {
        let (text, charset) = decode(
            b"MSH|^~\\&|A",
            Some("ASCII"),
            None,
            &CharsetRules::default(),
        );
        assert_eq!(text, "MSH|^~\\&|A");
        assert_eq!(charset.source, CharsetSource::Utf8Valid);
        assert!(!charset.declared_mismatch);
    }

    #[test]
    fn ascii_bytes_never_contradict_the_declared_set() {
        let (_, charset) = decode(
            b"MSH|^~\\&|A",
            Some("8859/1"),
            None,
            &CharsetRules::default(),
        );
        assert!(!charset.declared_mismatch);
    }

    #[test]
    fn declared_utf8_is_recorded_as_declared() {
        let (text, charset) = decode(
            "Zoë".as_bytes(),
            Some("UNICODE UTF-8"),
            None,
            &CharsetRules::default(),
        );
        assert_eq!(text, "Zoë");
        assert_eq!(charset.source, CharsetSource::Msh18);
        assert_eq!(charset.encoding, "UTF-8");
    }

    #[test]
    fn utf8_bytes_win_over_a_declared_latin1() {
        let (text, charset) = decode(
            "Zoë".as_bytes(),
            Some("8859/1"),
            None,
            &CharsetRules::default(),
        );
        assert_eq!(text, "Zoë");
        assert_eq!(charset.source, CharsetSource::Utf8Valid);
        assert!(charset.declared_mismatch);
    }

    #[test]
    fn declared_single_byte_set_is_used_when_bytes_are_not_utf8() {
        let (text, charset) = decode(b"Zo\xEB", Some("8859/1"), None, &CharsetRules::default());
        assert_eq!(text, "Zoë");
        assert_eq!(charset.source, CharsetSource::Msh18);
        let (text, _) = decode(b"\xB1", Some("8859/2"), None, &CharsetRules::default());
        assert_eq!(text, "ą");
    }

    #[test]
    fn undeclared_invalid_utf8_falls_back_to_windows_1252() {
        let (text, charset) = decode(b"ELAB\x963", None, None, &CharsetRules::default());
        assert_eq!(text, "ELAB\u{2013}3");
        assert_eq!(charset.source, CharsetSource::Fallback);
        assert_eq!(charset.encoding, "windows-1252");
    }

    #[test]
    fn declared_multibyte_set_is_used() {
        let (text, charset) = decode(
            b"\xC7\xD1",
            Some("KS X 1001"),
            None,
            &CharsetRules::default(),
        );
        assert_eq!(text, "한");
        assert_eq!(charset.source, CharsetSource::Msh18);
    }

    #[test]
    fn a_sender_setting_wins_over_msh_18_and_utf_8() {
        let rules =
            CharsetRules::parse(Some("LAB^EAST=8859/2; *^WEST=windows-1250"), None).unwrap();
        // 0xB1 is ą in 8859/2; MSH-18 says 8859/1 (±).
        let (text, charset) = decode(b"\xB1", Some("8859/1"), Some(("LAB", "EAST")), &rules);
        assert_eq!(
            (text.as_str(), charset.source),
            ("ą", CharsetSource::Sender)
        );
        let (_, charset) = decode(b"\xB9", None, Some(("ANY", "WEST")), &rules);
        assert_eq!(charset.encoding, "windows-1250");
        let (_, charset) = decode(b"\xB1", Some("8859/1"), Some(("LAB", "WEST2")), &rules);
        assert_eq!(
            charset.source,
            CharsetSource::Msh18,
            "no rule for this sender"
        );
    }

    #[test]
    fn the_fallback_is_configurable_and_single_byte() {
        let rules = CharsetRules::parse(None, Some("8859/5")).unwrap();
        let (text, charset) = decode(b"\xB0", None, None, &rules);
        assert_eq!(
            (text.as_str(), charset.source),
            ("А", CharsetSource::Fallback)
        );
        let problems =
            CharsetRules::parse(Some("LAB=utf-8;A^B=klingon"), Some("gb18030")).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
