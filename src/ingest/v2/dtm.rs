//! HL7 timestamps (DTM, DT, TS, TM) to FHIR `date`, `dateTime`, `instant` and `time` text.
//!
//! Done here rather than through `hl7-parser`'s chrono conversion, which gets the minutes of
//! negative offsets wrong (`-0330` becomes -02:30).
//!
//! HL7 `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]` keeps its precision: a date alone gives
//! `YYYY`, `YYYY-MM` or `YYYY-MM-DD` (an offset on a date is dropped, FHIR has no place for
//! it); a time is written to the second (FHIR requires seconds) with the sent offset, or the
//! configured default offset when none was sent (FHIR requires one whenever there is a time).

use std::fmt;

use chrono::NaiveDate;
use thiserror::Error;

/// A UTC offset, within the -14:00..+14:00 that FHIR allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UtcOffset {
    minutes: i16,
}

impl UtcOffset {
    pub const UTC: UtcOffset = UtcOffset { minutes: 0 };

    pub fn from_minutes(minutes: i32) -> Option<Self> {
        let minutes = i16::try_from(minutes).ok().filter(|m| m.abs() <= 14 * 60)?;
        Some(UtcOffset { minutes })
    }

    /// Reads `Z`, `+05:30`, `-0500`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text == "Z" {
            return Some(Self::UTC);
        }
        let digits = text.get(1..)?.replacen(':', "", 1);
        let negative = match text.as_bytes()[0] {
            b'+' => false,
            b'-' => true,
            _ => return None,
        };
        offset_from_digits(negative, &digits)
    }

    pub fn minutes(&self) -> i32 {
        i32::from(self.minutes)
    }
}

impl fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.minutes < 0 { '-' } else { '+' };
        let minutes = self.minutes.unsigned_abs();
        write!(f, "{sign}{:02}:{:02}", minutes / 60, minutes % 60)
    }
}

fn offset_from_digits(negative: bool, digits: &str) -> Option<UtcOffset> {
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    if minutes >= 60 {
        return None;
    }
    let total = hours * 60 + minutes;
    UtcOffset::from_minutes(if negative { -total } else { total })
}

/// Why a timestamp cannot be converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DtmError {
    #[error("not an HL7 date/time")]
    Syntax,
    #[error("date/time outside the calendar or offset out of range")]
    Range,
    #[error("date/time not precise enough for this element")]
    Precision,
}

/// An HL7 DTM, checked against the calendar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dtm {
    pub year: u16,
    pub month: Option<u8>,
    pub day: Option<u8>,
    pub hour: Option<u8>,
    pub minute: Option<u8>,
    pub second: Option<u8>,
    /// Fraction of a second, 1 to 4 digits as sent.
    pub fraction: Option<String>,
    pub offset: Option<UtcOffset>,
}

impl Dtm {
    pub fn parse(raw: &str) -> Result<Dtm, DtmError> {
        let (body, offset) = split_offset(raw.trim())?;
        let (digits, fraction) = match body.split_once('.') {
            Some((digits, fraction)) => (digits, Some(fraction)),
            None => (body, None),
        };
        if !is_digits(digits) || ![4, 6, 8, 10, 12, 14].contains(&digits.len()) {
            return Err(DtmError::Syntax);
        }
        if let Some(fraction) = fraction {
            if digits.len() != 14 || !is_digits(fraction) || !(1..=4).contains(&fraction.len()) {
                return Err(DtmError::Syntax);
            }
        }
        let dtm = Dtm::from_digits(digits, fraction, offset);
        dtm.check()?;
        Ok(dtm)
    }

    fn from_digits(digits: &str, fraction: Option<&str>, offset: Option<UtcOffset>) -> Dtm {
        let two = |at: usize| digits.get(at..at + 2).and_then(|d| d.parse().ok());
        Dtm {
            year: digits[..4].parse().unwrap_or(0),
            month: two(4),
            day: two(6),
            hour: two(8),
            minute: two(10),
            second: two(12),
            fraction: fraction.map(str::to_owned),
            offset,
        }
    }

    fn check(&self) -> Result<(), DtmError> {
        let month = self.month.unwrap_or(1);
        let day = self.day.unwrap_or(1);
        let date = NaiveDate::from_ymd_opt(i32::from(self.year), u32::from(month), u32::from(day));
        let time_ok = self.hour.unwrap_or(0) < 24
            && self.minute.unwrap_or(0) < 60
            && self.second.unwrap_or(0) < 60;
        if self.year == 0 || date.is_none() || !time_ok {
            return Err(DtmError::Range);
        }
        Ok(())
    }

    /// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`; any time is left out.
    pub fn to_fhir_date(&self) -> String {
        let mut text = format!("{:04}", self.year);
        for part in [self.month, self.day].into_iter().map_while(|p| p) {
            text.push_str(&format!("-{part:02}"));
        }
        text
    }

    /// A FHIR `dateTime`: the date at its precision, or a time to the second with an offset.
    pub fn to_fhir_date_time(&self, default_offset: UtcOffset) -> String {
        let Some(hour) = self.hour else {
            return self.to_fhir_date();
        };
        let minute = self.minute.unwrap_or(0);
        let second = self.second.unwrap_or(0);
        let mut text = format!("{}T{hour:02}:{minute:02}:{second:02}", self.to_fhir_date());
        if let Some(fraction) = &self.fraction {
            text.push('.');
            text.push_str(fraction);
        }
        text.push_str(&self.offset.unwrap_or(default_offset).to_string());
        text
    }

    /// A FHIR `instant`: needs at least minutes; seconds are filled with zeros when absent.
    pub fn to_fhir_instant(&self, default_offset: UtcOffset) -> Result<String, DtmError> {
        match self.minute {
            Some(_) => Ok(self.to_fhir_date_time(default_offset)),
            None => Err(DtmError::Precision),
        }
    }
}

fn is_digits(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit())
}

fn split_offset(raw: &str) -> Result<(&str, Option<UtcOffset>), DtmError> {
    match raw.find(['+', '-']) {
        Some(at) => {
            let offset = offset_from_digits(raw.as_bytes()[at] == b'-', &raw[at + 1..]);
            Ok((&raw[..at], Some(offset.ok_or(DtmError::Range)?)))
        }
        None => Ok((raw, None)),
    }
}

/// HL7 DTM/DT/TS to FHIR `date`.
pub fn fhir_date(raw: &str) -> Result<String, DtmError> {
    Ok(Dtm::parse(raw)?.to_fhir_date())
}

/// HL7 DTM/DT/TS to FHIR `dateTime`.
pub fn fhir_date_time(raw: &str, default_offset: UtcOffset) -> Result<String, DtmError> {
    Ok(Dtm::parse(raw)?.to_fhir_date_time(default_offset))
}

/// HL7 DTM/TS to FHIR `instant`.
pub fn fhir_instant(raw: &str, default_offset: UtcOffset) -> Result<String, DtmError> {
    Dtm::parse(raw)?.to_fhir_instant(default_offset)
}

/// HL7 TM (`HH[MM[SS[.SSSS]]][+/-ZZZZ]`) to FHIR `time` (`hh:mm:ss`). FHIR `time` has no
/// offset, so a sent offset is checked and dropped.
pub fn fhir_time(raw: &str) -> Result<String, DtmError> {
    let (body, _offset) = split_offset(raw.trim())?;
    let (digits, fraction) = match body.split_once('.') {
        Some((digits, fraction)) => (digits, Some(fraction)),
        None => (body, None),
    };
    let fraction_ok = fraction.is_none_or(|f| digits.len() == 6 && is_digits(f) && f.len() <= 4);
    if !is_digits(digits) || ![2, 4, 6].contains(&digits.len()) || !fraction_ok {
        return Err(DtmError::Syntax);
    }
    let dtm = Dtm::from_digits(&format!("20000101{digits}"), fraction, None);
    dtm.check()?;
    let text = dtm.to_fhir_date_time(UtcOffset::UTC);
    Ok(text["2000-01-01T".len()..text.len() - "+00:00".len()].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minus_five() -> UtcOffset {
        UtcOffset::from_minutes(-300).unwrap()
    }

    #[test]
    fn full_timestamp_keeps_fraction_and_offset() {
        let text = fhir_date_time("20240630120030.1234-0500", UtcOffset::UTC).unwrap();
        assert_eq!(text, "2024-06-30T12:00:30.1234-05:00");
    }

    #[test]
    fn negative_offsets_keep_their_minutes() {
        assert_eq!(
            fhir_date_time("202406301200-0330", UtcOffset::UTC).unwrap(),
            "2024-06-30T12:00:00-03:30"
        );
        assert_eq!(
            fhir_date_time("201203141259+0215", UtcOffset::UTC).unwrap(),
            "2012-03-14T12:59:00+02:15"
        );
    }

    #[test]
    fn time_without_offset_gets_the_default_offset() {
        assert_eq!(
            fhir_date_time("20240630120030", minus_five()).unwrap(),
            "2024-06-30T12:00:30-05:00"
        );
        assert_eq!(
            fhir_date_time("2024063012", UtcOffset::UTC).unwrap(),
            "2024-06-30T12:00:00+00:00"
        );
    }

    #[test]
    fn dates_keep_their_precision() {
        assert_eq!(fhir_date_time("2024", UtcOffset::UTC).unwrap(), "2024");
        assert_eq!(fhir_date_time("202406", UtcOffset::UTC).unwrap(), "2024-06");
        assert_eq!(
            fhir_date_time("20240630", UtcOffset::UTC).unwrap(),
            "2024-06-30"
        );
        assert_eq!(
            fhir_date_time("20240630-0500", UtcOffset::UTC).unwrap(),
            "2024-06-30"
        );
        assert_eq!(fhir_date("19880121190000-0500").unwrap(), "1988-01-21");
    }

    #[test]
    fn invalid_timestamps_are_rejected() {
        assert_eq!(fhir_date("196203520"), Err(DtmError::Syntax));
        assert_eq!(fhir_date("20230229"), Err(DtmError::Range));
        assert_eq!(fhir_date("20241301"), Err(DtmError::Range));
        assert_eq!(fhir_date("0000"), Err(DtmError::Range));
        assert_eq!(
            fhir_date_time("202406302400", UtcOffset::UTC),
            Err(DtmError::Range)
        );
        assert_eq!(
            fhir_date_time("20240630+1500", UtcOffset::UTC),
            Err(DtmError::Range)
        );
        assert_eq!(
            fhir_date_time("20240630+05", UtcOffset::UTC),
            Err(DtmError::Range)
        );
        assert_eq!(
            fhir_date_time("202406301200.5", UtcOffset::UTC),
            Err(DtmError::Syntax)
        );
        assert_eq!(
            fhir_date_time("20240630120000.12345", UtcOffset::UTC),
            Err(DtmError::Syntax)
        );
        assert_eq!(fhir_date_time("", UtcOffset::UTC), Err(DtmError::Syntax));
    }

    #[test]
    fn leap_days_are_accepted() {
        assert_eq!(fhir_date("20240229").unwrap(), "2024-02-29");
    }

    #[test]
    fn instants_need_minutes() {
        assert_eq!(
            fhir_instant("202004021123-0500", UtcOffset::UTC).unwrap(),
            "2020-04-02T11:23:00-05:00"
        );
        assert_eq!(
            fhir_instant("2020040211", UtcOffset::UTC),
            Err(DtmError::Precision)
        );
        assert_eq!(
            fhir_instant("20200402", UtcOffset::UTC),
            Err(DtmError::Precision)
        );
    }

    #[test]
    fn times_are_written_to_the_second() {
        assert_eq!(fhir_time("1130").unwrap(), "11:30:00");
        assert_eq!(fhir_time("113005.25+0100").unwrap(), "11:30:05.25");
        assert_eq!(fhir_time("2530"), Err(DtmError::Range));
        assert_eq!(fhir_time("1"), Err(DtmError::Syntax));
    }

    #[test]
    fn offsets_are_parsed_and_written() {
        assert_eq!(UtcOffset::parse("+05:30").unwrap().minutes(), 330);
        assert_eq!(UtcOffset::parse("-0330").unwrap().to_string(), "-03:30");
        assert_eq!(UtcOffset::parse("Z"), Some(UtcOffset::UTC));
        assert_eq!(UtcOffset::UTC.to_string(), "+00:00");
        assert_eq!(UtcOffset::parse("+14:30"), None);
        assert_eq!(UtcOffset::parse("0500"), None);
        assert_eq!(UtcOffset::from_minutes(-841), None);
    }
}
