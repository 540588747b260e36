//! MSH-1 and MSH-2: the delimiters each message declares for itself.
//!
//! Read here rather than by `hl7-parser`, which takes exactly four encoding characters: with the
//! v2.7 truncation character (`^~\&#`) every MSH field moves by one, and with two or three
//! characters its result is garbage, both without an error.

use thiserror::Error;

/// The separators and escape character of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
    /// The v2.7 truncation character, when MSH-2 declares a fifth one.
    pub truncation: Option<char>,
}

/// Why MSH-1/MSH-2 cannot be used. Each leads to an AR.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DelimiterError {
    #[error("MSH-1 (field separator) is missing")]
    MissingFieldSeparator,
    #[error("MSH-1 is not a printable ASCII character other than a letter or digit")]
    InvalidFieldSeparator,
    #[error("MSH-2 holds {0} encoding characters; 4 or 5 are required")]
    WrongCount(usize),
    #[error("MSH-2 holds a character that cannot be a delimiter")]
    InvalidCharacter,
    #[error("MSH-1 and MSH-2 use the same character twice")]
    Duplicate,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self::STANDARD
    }
}

impl Delimiters {
    /// `|^~\&`, used when nothing better is known.
    pub const STANDARD: Delimiters = Delimiters {
        field: '|',
        component: '^',
        repetition: '~',
        escape: '\\',
        subcomponent: '&',
        truncation: None,
    };

    /// Reads MSH-1 and MSH-2 from the start of an MSH segment (`MSH|^~\&|...`).
    pub fn read(msh_segment: &str) -> Result<Self, DelimiterError> {
        let field = field_separator(msh_segment)?;
        let encoding: Vec<char> = msh_segment[4..]
            .chars()
            .take_while(|&c| c != field)
            .collect();
        if !(4..=5).contains(&encoding.len()) {
            return Err(DelimiterError::WrongCount(encoding.len()));
        }
        if !encoding.iter().all(|&c| is_delimiter_char(c)) {
            return Err(DelimiterError::InvalidCharacter);
        }
        let delimiters = Delimiters {
            field,
            component: encoding[0],
            repetition: encoding[1],
            escape: encoding[2],
            subcomponent: encoding[3],
            truncation: encoding.get(4).copied(),
        };
        delimiters.check_distinct()?;
        Ok(delimiters)
    }

    /// MSH-2 as these delimiters write it.
    pub fn encoding_characters(&self) -> String {
        let mut text: String = [
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ]
        .into_iter()
        .collect();
        text.extend(self.truncation);
        text
    }

    fn all(&self) -> impl Iterator<Item = char> {
        [
            self.field,
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ]
        .into_iter()
        .chain(self.truncation)
    }

    fn check_distinct(&self) -> Result<(), DelimiterError> {
        let chars: Vec<char> = self.all().collect();
        let distinct = chars
            .iter()
            .enumerate()
            .all(|(i, c)| !chars[..i].contains(c));
        if distinct {
            Ok(())
        } else {
            Err(DelimiterError::Duplicate)
        }
    }
}

/// MSH-1 of a segment that starts with `MSH`.
pub(crate) fn field_separator(msh_segment: &str) -> Result<char, DelimiterError> {
    let field = msh_segment
        .strip_prefix("MSH")
        .and_then(|rest| rest.chars().next())
        .ok_or(DelimiterError::MissingFieldSeparator)?;
    if is_delimiter_char(field) {
        Ok(field)
    } else {
        Err(DelimiterError::InvalidFieldSeparator)
    }
}

fn is_delimiter_char(c: char) -> bool {
    c.is_ascii_graphic() && !c.is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_delimiters_are_read() {
        let d = Delimiters::read("MSH|^~\\&|APP").unwrap();
        assert_eq!(d, Delimiters::STANDARD);
        assert_eq!(d.encoding_characters(), "^~\\&");
    }

    #[test]
    fn truncation_character_is_a_fifth_encoding_character() {
        let d = Delimiters::read("MSH|^~\\&#|APP").unwrap();
        assert_eq!(d.truncation, Some('#'));
        assert_eq!(d.subcomponent, '&');
        assert_eq!(d.encoding_characters(), "^~\\&#");
    }

    #[test]
    fn non_standard_delimiters_are_read() {
        let d = Delimiters::read("MSH:-+?*:F2").unwrap();
        assert_eq!((d.field, d.component, d.repetition), (':', '-', '+'));
        assert_eq!((d.escape, d.subcomponent), ('?', '*'));
        let d = Delimiters::read("MSH$%~\\&$GHH").unwrap();
        assert_eq!((d.field, d.component), ('$', '%'));
    }

    #[test]
    fn msh_2_at_the_end_of_the_segment_is_read() {
        assert!(Delimiters::read("MSH|^~\\&").is_ok());
    }

    #[test]
    fn too_few_or_too_many_encoding_characters_are_rejected() {
        assert_eq!(
            Delimiters::read("MSH|^~\\|A"),
            Err(DelimiterError::WrongCount(3))
        );
        assert_eq!(
            Delimiters::read("MSH|^~|A"),
            Err(DelimiterError::WrongCount(2))
        );
        assert_eq!(
            Delimiters::read("MSH|^~\\&#!|A"),
            Err(DelimiterError::WrongCount(6))
        );
    }

    #[test]
    fn duplicated_encoding_characters_are_rejected() {
        assert_eq!(
            Delimiters::read("MSH|^~\\\\&|A"),
            Err(DelimiterError::Duplicate)
        );
        assert_eq!(
            Delimiters::read("MSH|^~|&|A"),
            Err(DelimiterError::WrongCount(2))
        );
        assert_eq!(
            Delimiters::read("MSH|^~\\^|A"),
            Err(DelimiterError::Duplicate)
        );
    }

    #[test]
    fn letters_and_missing_separators_are_rejected() {
        assert_eq!(
            Delimiters::read("MSH"),
            Err(DelimiterError::MissingFieldSeparator)
        );
        assert_eq!(
            Delimiters::read("MSHA^~\\&"),
            Err(DelimiterError::InvalidFieldSeparator)
        );
        assert_eq!(
            Delimiters::read("MSH|^~x&|A"),
            Err(DelimiterError::InvalidCharacter)
        );
    }
}
