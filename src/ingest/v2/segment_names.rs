//! Segment names: what a segment may start with, and spotting segments joined by a space.
//!
//! Pasted or re-wrapped messages arrive with segments joined by spaces on one line
//! (`...|2.3||| EVN|A01|...`) or hard-wrapped inside a field. `hl7-parser` reads the first as
//! one long segment and stops silently at the second; both are caught here and rejected, since
//! guessing where the sender meant a segment to end could put data in the wrong field.

/// Standard segment names that, found after a space and followed by the field separator,
/// mean that two segments were joined. Names that read as words or abbreviations in names
/// and free text (`FAC` in "SENDING FAC", `LAN`, `ORG`, `EDU`, `SAC`, `SCH`, ...) and local
/// Z-segments are left out: a missed join is still caught when the line reads wrongly, a false
/// one would reject a good message.
const JOINABLE_SEGMENTS: &[&str] = &[
    "AIG", "AIL", "AIP", "AIS", "AL1", "BHS", "BTS", "CTD", "CTI", "DB1", "DG1", "ERR", "EVN",
    "FHS", "FT1", "FTS", "GT1", "IAM", "IN1", "IN2", "IN3", "MRG", "MSA", "MSH", "NK1", "NTE",
    "OBR", "OBX", "ORC", "PD1", "PID", "PR1", "PRB", "PRT", "PV1", "PV2", "QAK", "QPD", "QRD",
    "RCP", "RGS", "ROL", "RXA", "RXC", "RXD", "RXE", "RXG", "RXO", "RXR", "SFT", "SPM", "TQ1",
    "TQ2", "TXA", "UB1", "UB2",
];

/// Whether `line` starts like a segment: three upper-case letters or digits (the first a
/// letter), then the field separator or the end of the line.
pub(crate) fn starts_like_segment(line: &str, field_separator: char) -> bool {
    let bytes = line.as_bytes();
    let name_ok = bytes.len() >= 3
        && bytes[0].is_ascii_uppercase()
        && bytes[1..3]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    name_ok
        && line[3..]
            .chars()
            .next()
            .is_none_or(|c| c == field_separator)
}

/// The byte offset of the space before a standard segment name joined onto `line`.
pub(crate) fn joined_segment_at(line: &str, field_separator: char) -> Option<usize> {
    line.match_indices(' ').map(|(i, _)| i).find(|&i| {
        let rest = &line[i + 1..];
        rest.get(..3)
            .is_some_and(|name| JOINABLE_SEGMENTS.contains(&name))
            && rest[3..].starts_with(field_separator)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joinable_segment_table_is_sorted_three_character_names() {
        assert!(JOINABLE_SEGMENTS.windows(2).all(|w| w[0] < w[1]));
        assert!(JOINABLE_SEGMENTS
            .iter()
            .all(|n| starts_like_segment(n, '|')));
    }

    #[test]
    fn segment_starts_are_recognised() {
        assert!(starts_like_segment("PV1|1|I", '|'));
        assert!(starts_like_segment("ZPR", '|'));
        assert!(!starts_like_segment("4563-8EBD}|P", '|'));
        assert!(!starts_like_segment("|||1095^DOE", '|'));
        assert!(!starts_like_segment("Remote Ops, Inc.", '|'));
        assert!(!starts_like_segment("obx|1", '|'));
        assert!(!starts_like_segment("OB", '|'));
    }

    #[test]
    fn joined_segments_are_found_after_a_space() {
        let line = "MSH|^~\\&|APP|FAC|||20240101||ADT^A01|1|P|2.3||| EVN|A01|20240101";
        assert_eq!(
            joined_segment_at(line, '|'),
            Some(line.find(" EVN").unwrap())
        );
        assert_eq!(joined_segment_at("PID|1||X|||M|NO NK1|1|", '|'), Some(15));
    }

    #[test]
    fn ordinary_text_is_not_a_joined_segment() {
        assert_eq!(joined_segment_at("MSH|^~\\&|CITY LAB|FAC", '|'), None);
        assert_eq!(joined_segment_at("NTE|1||see PID below", '|'), None);
        assert_eq!(joined_segment_at("OBX|1|ST|X||ZZZ ZDS|", '|'), None);
        assert_eq!(
            joined_segment_at("MSH|^~\\&|SENDING APP|SENDING FAC|REC FAC|", '|'),
            None
        );
    }
}
