//! HL7 escape sequences, decoded on access and applied when writing.
//!
//! Done here rather than with `hl7-parser`'s decoding, which panics when a non-ASCII character
//! precedes an escape in the same value, passes `\X..\`, `\H\` and `\N\` through as text and
//! drops a trailing lone escape character.

use std::borrow::Cow;

use super::delimiters::Delimiters;

/// What one escape sequence stands for.
enum Decoded {
    Char(char),
    Text(String),
    Nothing,
}

/// Decodes the escape sequences in one value.
///
/// `\F\ \S\ \T\ \R\ \E\` (and `\P\` when MSH-2 declares a truncation character) become the
/// delimiter; `\Xhh..\` becomes its bytes (UTF-8 when valid, else windows-1252); `\.br\` and
/// `\.sp\` become a newline; other formatting codes and `\H\`/`\N\` are dropped. An unknown
/// sequence or an escape character without a closing one is kept verbatim.
pub fn unescape<'a>(raw: &'a str, delimiters: &Delimiters) -> Cow<'a, str> {
    let esc = delimiters.escape;
    if !raw.contains(esc) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find(esc) {
        out.push_str(&rest[..start]);
        let after = &rest[start + esc.len_utf8()..];
        let sequence = after
            .find(esc)
            .and_then(|end| decode_sequence(&after[..end], delimiters).map(|d| (end, d)));
        match sequence {
            Some((end, decoded)) => {
                push_decoded(&mut out, decoded);
                rest = &after[end + esc.len_utf8()..];
            }
            None => {
                out.push(esc);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn push_decoded(out: &mut String, decoded: Decoded) {
    match decoded {
        Decoded::Char(c) => out.push(c),
        Decoded::Text(text) => out.push_str(&text),
        Decoded::Nothing => {}
    }
}

fn decode_sequence(sequence: &str, d: &Delimiters) -> Option<Decoded> {
    let decoded = match sequence {
        "F" => Decoded::Char(d.field),
        "S" => Decoded::Char(d.component),
        "T" => Decoded::Char(d.subcomponent),
        "R" => Decoded::Char(d.repetition),
        "E" => Decoded::Char(d.escape),
        "P" => Decoded::Char(d.truncation?),
        "H" | "N" => Decoded::Nothing,
        ".br" => Decoded::Char('\n'),
        s if s.starts_with(".sp") && is_count(&s[3..]) => Decoded::Char('\n'),
        s if is_formatting_code(s) => Decoded::Nothing,
        s => Decoded::Text(decode_hex(s.strip_prefix('X')?)?),
    };
    Some(decoded)
}

/// The formatted-text (FT) codes other than `.br` and `.sp`, which carry no text.
fn is_formatting_code(sequence: &str) -> bool {
    match sequence {
        ".fi" | ".nf" | ".ce" => true,
        s if s.starts_with(".in") || s.starts_with(".ti") => is_signed_count(&s[3..]),
        s if s.starts_with(".sk") => is_count(&s[3..]),
        _ => false,
    }
}

fn is_count(text: &str) -> bool {
    text.chars().all(|c| c.is_ascii_digit())
}

fn is_signed_count(text: &str) -> bool {
    is_count(text.strip_prefix(['+', '-']).unwrap_or(text))
}

fn decode_hex(digits: &str) -> Option<String> {
    if digits.is_empty() || digits.len() % 2 != 0 || !digits.is_ascii() {
        return None;
    }
    let bytes = (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    match String::from_utf8(bytes) {
        Ok(text) => Some(text),
        // `decode` would sniff FF FE / FE FF as a UTF-16 byte-order mark and read the rest
        // as UTF-16; these bytes are windows-1252 text, BOM-looking or not.
        Err(err) => Some(
            encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(err.as_bytes())
                .0
                .into_owned(),
        ),
    }
}

/// Escapes delimiters, the escape character and line breaks so that `text` can be written
/// as one value.
pub fn escape<'a>(text: &'a str, d: &Delimiters) -> Cow<'a, str> {
    let special = |c: char| {
        [
            d.field,
            d.component,
            d.repetition,
            d.escape,
            d.subcomponent,
            '\r',
            '\n',
        ]
        .contains(&c)
            || Some(c) == d.truncation
    };
    if !text.contains(special) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match escape_code(c, d) {
            Some(code) => {
                out.push(d.escape);
                out.push_str(code);
                out.push(d.escape);
            }
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn escape_code(c: char, d: &Delimiters) -> Option<&'static str> {
    match c {
        '\r' => Some("X0D"),
        '\n' => Some("X0A"),
        c if c == d.field => Some("F"),
        c if c == d.component => Some("S"),
        c if c == d.subcomponent => Some("T"),
        c if c == d.repetition => Some("R"),
        c if c == d.escape => Some("E"),
        c if Some(c) == d.truncation => Some("P"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn un(raw: &str) -> String {
        unescape(raw, &Delimiters::STANDARD).into_owned()
    }

    #[test]
    fn delimiter_escapes_are_decoded() {
        assert_eq!(un(r"a\F\b\S\c\T\d\R\e\E\f"), r"a|b^c&d~e\f");
    }

    #[test]
    fn escaped_escape_characters_make_a_windows_path() {
        assert_eq!(un(r"path C:\E\TEMP\E\R\"), r"path C:\TEMP\R\");
    }

    #[test]
    fn hex_bytes_that_look_like_a_utf16_bom_stay_windows_1252_text() {
        assert_eq!(un(r"x\XFFFE4100\y"), "x\u{ff}\u{fe}A\u{0}y");
    }

    #[test]
    fn hex_escape_with_crlf_makes_two_lines() {
        let text = un(r"first line\X0D0A\second line");
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            ["first line", "second line"]
        );
    }

    #[test]
    fn hex_digits_may_be_any_case_and_any_even_count() {
        assert_eq!(un(r"\X41\\X4a4B\"), "AJK");
        assert_eq!(un(r"caf\XC3A9\"), "café");
        assert_eq!(un(r"\XE9\"), "é");
    }

    #[test]
    fn odd_or_invalid_hex_is_kept_verbatim() {
        assert_eq!(un(r"\X4\"), r"\X4\");
        assert_eq!(un(r"\XZZ\"), r"\XZZ\");
        assert_eq!(un(r"\X\"), r"\X\");
    }

    #[test]
    fn line_breaks_become_newlines_and_other_formatting_is_dropped() {
        assert_eq!(un(r"one\.br\two\.sp2\three"), "one\ntwo\nthree");
        assert_eq!(un(r"\H\bold\N\ \.ce\centred\.in+4\\.fi\"), "bold centred");
    }

    #[test]
    fn unknown_sequences_and_a_lone_trailing_escape_are_kept() {
        assert_eq!(un(r"\Zabc\ x"), r"\Zabc\ x");
        assert_eq!(un(r"ends with \"), r"ends with \");
        assert_eq!(un(r"a\b c\F\d"), r"a\b c|d");
    }

    #[test]
    fn non_ascii_text_before_an_escape_is_decoded() {
        assert_eq!(un(r"ëë\S\ë"), "ëë^ë");
        assert_eq!(un(r"日本\F\語"), "日本|語");
        assert_eq!(un(r"Testpatiënt\T\x"), "Testpatiënt&x");
    }

    #[test]
    fn truncation_escape_needs_a_declared_truncation_character() {
        let mut d = Delimiters::STANDARD;
        assert_eq!(unescape(r"a\P\b", &d), r"a\P\b");
        d.truncation = Some('#');
        assert_eq!(unescape(r"a\P\b", &d), "a#b");
    }

    #[test]
    fn non_standard_escape_character_is_used() {
        let d = Delimiters::read("MSH:-+?*:x").unwrap();
        assert_eq!(unescape("a?R?b?S?c", &d), "a+b-c");
    }

    #[test]
    fn escape_round_trips_through_unescape() {
        let d = Delimiters::STANDARD;
        let text = "a|b^c&d~e\\f\r\ng";
        let escaped = escape(text, &d);
        assert_eq!(escaped, r"a\F\b\S\c\T\d\R\e\E\f\X0D\\X0A\g");
        assert_eq!(unescape(&escaped, &d), text);
    }

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(
            escape("plain", &Delimiters::STANDARD),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            unescape("plain", &Delimiters::STANDARD),
            Cow::Borrowed(_)
        ));
    }
}
