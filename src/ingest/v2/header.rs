//! What an ACK needs from MSH, read from the MSH line alone.
//!
//! The header is read by splitting the decoded MSH line on its field separator, without
//! `hl7-parser`, so that a message whose MSH-2 or body cannot be parsed can still be answered
//! with an AR that echoes the sender's values.

use super::delimiters::{field_separator, DelimiterError, Delimiters};
use super::escape::unescape;
use super::segment_names::joined_segment_at;

/// MSH values an ACK echoes, as the sender sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// MSH-1 as sent.
    pub field_separator: char,
    /// MSH-2 as sent (four or five characters when valid).
    pub encoding_characters: String,
    /// MSH-1 and MSH-2 checked; an error here leads to AR.
    pub delimiters: Result<Delimiters, DelimiterError>,
    /// MSH-3, raw (still escaped): echoed as MSH-5 of the ACK.
    pub sending_application: String,
    /// MSH-4, raw: echoed as MSH-6 of the ACK.
    pub sending_facility: String,
    /// MSH-5, raw: echoed as MSH-3 of the ACK.
    pub receiving_application: String,
    /// MSH-6, raw: echoed as MSH-4 of the ACK.
    pub receiving_facility: String,
    /// MSH-9.1, decoded (`ORU`).
    pub message_code: Option<String>,
    /// MSH-9.2, decoded (`R01`).
    pub trigger_event: Option<String>,
    /// MSH-9.3, decoded (`ORU_R01`).
    pub message_structure: Option<String>,
    /// MSH-10, raw. `None` when absent or when it may have been cut by a wrapped line.
    pub control_id: Option<String>,
    /// MSH-11, raw.
    pub processing_id: Option<String>,
    /// MSH-12, raw (`2.5.1`, or `2.5^FRA^2.5`).
    pub version: Option<String>,
    /// MSH-15, raw.
    pub accept_ack_type: Option<String>,
    /// MSH-16, raw.
    pub application_ack_type: Option<String>,
}

impl Header {
    /// The namespace ids (HD-1) of MSH-3 and MSH-4, unescaped: who sent the message.
    pub fn namespace_ids(&self) -> Option<(String, String)> {
        let delimiters = self.delimiters.as_ref().ok()?;
        let first = |raw: &str| {
            let namespace = raw.split(delimiters.component).next().unwrap_or("");
            unescape(namespace, delimiters).trim().to_string()
        };
        Some((
            first(&self.sending_application),
            first(&self.sending_facility),
        ))
    }

    /// Whether the message is itself an acknowledgement (MSH-9.1 `ACK`), which is never
    /// answered: acknowledging acknowledgements would loop.
    pub fn is_acknowledgement(&self) -> bool {
        self.message_code.as_deref() == Some("ACK")
    }

    /// Reads the header from a decoded MSH segment. `continued` says that the next line of the
    /// message is not a segment (the MSH was wrapped), so its last field may be cut short and
    /// is not trusted. Returns `None` when the line has no usable field separator.
    pub(crate) fn read(msh_segment: &str, continued: bool) -> Option<Header> {
        let separator = field_separator(msh_segment).ok()?;
        let line = match joined_segment_at(msh_segment, separator) {
            Some(end) => &msh_segment[..end],
            None => msh_segment,
        };
        let mut fields: Vec<&str> = line.split(separator).collect();
        if continued && fields.len() > 2 {
            fields.pop();
        }
        let msh = MshFields { fields };
        Some(msh.header(separator, Delimiters::read(line)))
    }
}

/// The MSH line split on its field separator; `fields[n - 1]` is MSH-n for n >= 2.
struct MshFields<'a> {
    fields: Vec<&'a str>,
}

impl<'a> MshFields<'a> {
    fn raw(&self, n: usize) -> &'a str {
        self.fields.get(n - 1).copied().unwrap_or("")
    }

    fn optional(&self, n: usize) -> Option<String> {
        Some(self.raw(n))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    fn header(&self, separator: char, delimiters: Result<Delimiters, DelimiterError>) -> Header {
        let [code, trigger, structure] = self.message_type(delimiters.as_ref().ok());
        Header {
            field_separator: separator,
            encoding_characters: self.raw(2).to_owned(),
            delimiters,
            sending_application: self.raw(3).to_owned(),
            sending_facility: self.raw(4).to_owned(),
            receiving_application: self.raw(5).to_owned(),
            receiving_facility: self.raw(6).to_owned(),
            message_code: code,
            trigger_event: trigger,
            message_structure: structure,
            control_id: self.optional(10),
            processing_id: self.optional(11),
            version: self.optional(12),
            accept_ack_type: self.optional(15),
            application_ack_type: self.optional(16),
        }
    }

    /// MSH-9 components. With unusable delimiters the component separator is still taken
    /// from MSH-2 when it differs from MSH-1, and nothing is unescaped.
    fn message_type(&self, delimiters: Option<&Delimiters>) -> [Option<String>; 3] {
        let msh_9 = self.raw(9);
        let component = delimiters
            .map(|d| d.component)
            .or_else(|| self.raw(2).chars().next())
            .unwrap_or('^');
        let mut parts = msh_9.split(component).map(|part| {
            let text = match delimiters {
                Some(d) => unescape(part, d),
                None => part.into(),
            };
            Some(text.trim().to_owned()).filter(|t| !t.is_empty())
        });
        [(); 3].map(|_| parts.next().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORU: &str = "MSH|^~\\&|LABAPP|LABFAC|EHR|HOSP|20240630120030-0500||ORU^R01^ORU_R01|\
                       CTRL-0042|P|2.5.1|||AL|NE";

    #[test]
    fn header_fields_are_read_as_sent() {
        let h = Header::read(ORU, false).unwrap();
        assert_eq!(h.field_separator, '|');
        assert_eq!(h.encoding_characters, "^~\\&");
        assert_eq!(h.sending_application, "LABAPP");
        assert_eq!(h.receiving_facility, "HOSP");
        assert_eq!(h.message_code.as_deref(), Some("ORU"));
        assert_eq!(h.trigger_event.as_deref(), Some("R01"));
        assert_eq!(h.message_structure.as_deref(), Some("ORU_R01"));
        assert_eq!(h.control_id.as_deref(), Some("CTRL-0042"));
        assert_eq!(h.processing_id.as_deref(), Some("P"));
        assert_eq!(h.version.as_deref(), Some("2.5.1"));
        assert_eq!(h.accept_ack_type.as_deref(), Some("AL"));
        assert_eq!(h.application_ack_type.as_deref(), Some("NE"));
    }

    #[test]
    fn truncation_character_does_not_shift_fields() {
        let h = Header::read("MSH|^~\\&#|A|B|C|D|20240101||ADT^A04|C1|T|2.5.1", false).unwrap();
        assert_eq!(h.encoding_characters, "^~\\&#");
        assert_eq!(h.trigger_event.as_deref(), Some("A04"));
        assert_eq!(h.control_id.as_deref(), Some("C1"));
        assert_eq!(h.version.as_deref(), Some("2.5.1"));
    }

    #[test]
    fn header_is_read_even_when_msh_2_is_invalid() {
        let h = Header::read(
            "MSH|^~\\\\&|dev||Host||20240101||OUL^R22^OUL_R22|2|P|2.5.1",
            false,
        )
        .unwrap();
        assert_eq!(h.delimiters, Err(DelimiterError::Duplicate));
        assert_eq!(h.trigger_event.as_deref(), Some("R22"));
        assert_eq!(h.control_id.as_deref(), Some("2"));
    }

    #[test]
    fn sender_values_stay_escaped() {
        let h = Header::read("MSH|^~\\&|A\\S\\2|F\\T\\G|||1||ADT^A08|9|P|2.3", false).unwrap();
        assert_eq!(h.sending_application, "A\\S\\2");
        assert_eq!(h.sending_facility, "F\\T\\G");
    }

    #[test]
    fn control_id_cut_by_a_wrapped_line_is_not_trusted() {
        let h = Header::read("MSH|^~\\&|A|B|C||20050918||MDM^T04|{6AF4-5BF1-", true).unwrap();
        assert_eq!(h.control_id, None);
        assert_eq!(h.trigger_event.as_deref(), Some("T04"));
    }

    #[test]
    fn header_stops_where_a_segment_was_joined_by_a_space() {
        let h = Header::read(
            "MSH|^~\\&|A|1|||2005||ADT^A01|599|P|2.3||| EVN|A01|2005",
            false,
        )
        .unwrap();
        assert_eq!(h.control_id.as_deref(), Some("599"));
        assert_eq!(h.accept_ack_type, None);
    }

    #[test]
    fn missing_fields_are_none() {
        let h = Header::read("MSH:-+?*:field2:field3", false).unwrap();
        assert_eq!(h.field_separator, ':');
        assert_eq!(h.message_code, None);
        assert_eq!(h.control_id, None);
        assert!(Header::read("MSH", false).is_none());
        assert!(Header::read("MSHA|B", false).is_none());
    }
}
