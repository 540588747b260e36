//! Which acknowledgements a message gets, read from MSH-15 and MSH-16 (HL7 v2.5.1 chapter 2,
//! original and enhanced acknowledgement modes; HL7 table 0155).
//!
//! Original mode, both fields empty: one ACK, always, AA, AE or AR.
//!
//! Enhanced mode, either field valued: an accept (commit) acknowledgement, then an application
//! acknowledgement, each sent only under the condition its field names: `AL` always, `NE`
//! never, `ER` only for an error or a reject, `SU` only for success.
//! - The accept ACK says whether the message is in safe storage: `CA` once it is committed
//!   (the same commit that precedes AA), `CE` when it could not be stored now and should be sent
//!   again, `CR` when it cannot be accepted as sent (what original mode answers AR).
//! - The application ACK is AA, AE or AR exactly as original mode decides. It is sent after a
//!   CE or CR too, when MSH-16 asks for it: the standard makes original mode the same as
//!   enhanced mode with MSH-15 `NE` and MSH-16 `AL` (v2.8.2 chapter 2, note in 2.9.2), so a
//!   sender using that spelling must hear of a refusal as an original-mode sender does.
//!
//! One field empty while the other is valued: the standard says only that both empty means
//! original mode. Following the same equivalence, an empty field keeps its original-mode
//! meaning: an empty MSH-15 reads as `NE` (original mode sends no accept ACK) and an empty
//! MSH-16 as `AL` (original mode always sends the application ACK). A value outside table 0155
//! counts as empty, since no condition can be read from it.

use super::ack::AckCode;
use super::header::Header;

/// HL7 table 0155: when an acknowledgement is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCondition {
    /// `AL`
    Always,
    /// `NE`
    Never,
    /// `ER`: error or reject conditions only.
    OnError,
    /// `SU`: successful completion only.
    OnSuccess,
}

impl AckCondition {
    /// The condition a raw MSH-15 or MSH-16 names; `None` when empty or not in table 0155.
    pub fn read(raw: Option<&str>) -> Option<AckCondition> {
        match raw?.trim().to_ascii_uppercase().as_str() {
            "AL" => Some(AckCondition::Always),
            "NE" => Some(AckCondition::Never),
            "ER" => Some(AckCondition::OnError),
            "SU" => Some(AckCondition::OnSuccess),
            _ => None,
        }
    }

    /// What a client can know before the outcome: whether the ACK this condition governs will
    /// come, may come (depending on the outcome) or will not.
    pub fn expectation(self) -> Expectation {
        match (self.wants(true), self.wants(false)) {
            (true, true) => Expectation::Certain,
            (false, false) => Expectation::None,
            _ => Expectation::Maybe,
        }
    }

    /// What the absence of the ACK this condition governs says about the outcome: `Some(true)`
    /// when it is sent only on error (so none means success), `Some(false)` when it is sent only
    /// on success, `None` when its absence says nothing (never sent, or always sent and lost).
    pub fn silence_means_success(self) -> Option<bool> {
        match (self.wants(true), self.wants(false)) {
            (false, true) => Some(true),
            (true, false) => Some(false),
            _ => None,
        }
    }

    fn wants(self, success: bool) -> bool {
        match self {
            AckCondition::Always => true,
            AckCondition::Never => false,
            AckCondition::OnError => !success,
            AckCondition::OnSuccess => success,
        }
    }
}

/// Whether an acknowledgement will be sent, as known before the message is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expectation {
    None,
    /// Sent or not depending on the outcome (`ER`, `SU`).
    Maybe,
    Certain,
}

/// How a message is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Original,
    Enhanced {
        accept: AckCondition,
        application: AckCondition,
    },
}

/// The acknowledgements due for one message, with their MSA-1 codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueAcks {
    pub accept: Option<AckCode>,
    pub application: Option<AckCode>,
}

impl AckMode {
    /// The mode `header` asks for; original mode without a header.
    pub fn of(header: Option<&Header>) -> AckMode {
        let read = |pick: fn(&Header) -> Option<&str>| AckCondition::read(header.and_then(pick));
        let accept = read(|h| h.accept_ack_type.as_deref());
        let application = read(|h| h.application_ack_type.as_deref());
        if accept.is_none() && application.is_none() {
            return AckMode::Original;
        }
        AckMode::Enhanced {
            accept: accept.unwrap_or(AckCondition::Never),
            application: application.unwrap_or(AckCondition::Always),
        }
    }

    pub fn is_enhanced(&self) -> bool {
        matches!(self, AckMode::Enhanced { .. })
    }

    /// The conditions under which the accept ACK and the application ACK are sent. Original
    /// mode is enhanced mode with `NE` and `AL` (v2.8.2 chapter 2, note in 2.9.2), though its
    /// ACKs say nothing of enhanced mode.
    pub fn conditions(self) -> (AckCondition, AckCondition) {
        match self {
            AckMode::Original => (AckCondition::Never, AckCondition::Always),
            AckMode::Enhanced {
                accept,
                application,
            } => (accept, application),
        }
    }

    /// The ACKs due for a message answered `application` (AA, AE or AR, as original mode
    /// decides), `committed` saying whether it is in safe storage.
    pub fn due(self, application: AckCode, committed: bool) -> DueAcks {
        due_under(self.conditions(), application, committed)
    }

    /// The conditions under which a message with `header` gets each ACK: those of its mode,
    /// except that an inbound ACK gets none, whatever its MSH-15 and MSH-16 ask and even when
    /// it could not be read, since acknowledging acknowledgements would loop.
    pub fn conditions_for(header: Option<&Header>) -> (AckCondition, AckCondition) {
        if header.is_some_and(Header::is_acknowledgement) {
            return (AckCondition::Never, AckCondition::Never);
        }
        AckMode::of(header).conditions()
    }
}

/// The ACKs due under `conditions` (accept, application; see [`AckMode::conditions_for`]) for
/// a message answered `application`, `committed` saying whether it is in safe storage.
pub fn due_under(
    (accept, wanted): (AckCondition, AckCondition),
    application: AckCode,
    committed: bool,
) -> DueAcks {
    let commit = accept_code(application, committed);
    DueAcks {
        accept: Some(commit).filter(|c| accept.wants(*c == AckCode::CA)),
        application: Some(application).filter(|c| wanted.wants(*c == AckCode::AA)),
    }
}

/// The accept ACK's code: CR for what cannot be accepted as sent (AR), otherwise CA once the
/// message is committed and CE when it is not (the sender should send it again).
pub fn accept_code(application: AckCode, committed: bool) -> AckCode {
    match application {
        AckCode::AR => AckCode::CR,
        _ if committed => AckCode::CA,
        _ => AckCode::CE,
    }
}

/// The ACK messages of a stored answer (accept ACK and application ACK, as they were sent, one
/// after the other), told apart by MSA-1: accept ACKs say CA, CE or CR.
pub fn split_stored_acks(stored: &str) -> (Option<String>, Option<String>) {
    let (mut accept, mut application) = (None, None);
    for ack in ack_messages(stored) {
        if msa_field(&ack, 1).starts_with('C') {
            accept = Some(ack);
        } else {
            application = Some(ack);
        }
    }
    (accept, application)
}

/// The messages of a text of ACKs, each starting at a segment named MSH.
pub fn ack_messages(text: &str) -> Vec<String> {
    let mut messages: Vec<String> = Vec::new();
    for segment in text.split('\r').filter(|s| !s.is_empty()) {
        match messages.last_mut() {
            Some(message) if !segment.starts_with("MSH") => message.push_str(segment),
            _ => messages.push(segment.to_string()),
        }
        if let Some(message) = messages.last_mut() {
            message.push('\r');
        }
    }
    messages
}

/// MSA-`n` of one ACK message, raw; empty when it has no MSA or no such field.
pub fn msa_field(ack: &str, n: usize) -> &str {
    let separator = ack.chars().nth(3).unwrap_or('|');
    ack.split('\r')
        .find(|segment| segment.starts_with("MSA"))
        .and_then(|msa| msa.split(separator).nth(n))
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::v2::read_header;
    use AckCode::*;

    fn mode(msh_15: &str, msh_16: &str) -> AckMode {
        let msh = format!("MSH|^~\\&|A|B|C|D|2024||ORU^R01|C1|P|2.5.1|||{msh_15}|{msh_16}");
        AckMode::of(read_header(msh.as_bytes()).as_ref())
    }

    fn due(
        mode: AckMode,
        application: AckCode,
        committed: bool,
    ) -> (Option<AckCode>, Option<AckCode>) {
        let due = mode.due(application, committed);
        (due.accept, due.application)
    }

    #[test]
    fn both_fields_empty_is_original_mode_with_one_ack_always() {
        assert_eq!(mode("", ""), AckMode::Original);
        assert_eq!(AckMode::of(None), AckMode::Original);
        for code in [AA, AE, AR] {
            assert_eq!(due(AckMode::Original, code, true), (None, Some(code)));
        }
    }

    #[test]
    fn al_al_gets_the_commit_ack_then_the_application_ack() {
        let al = mode("AL", "AL");
        assert_eq!(due(al, AA, true), (Some(CA), Some(AA)));
        assert_eq!(
            due(al, AE, true),
            (Some(CA), Some(AE)),
            "stored, content refused"
        );
        assert_eq!(
            due(al, AE, false),
            (Some(CE), Some(AE)),
            "not stored: resend"
        );
        assert_eq!(due(al, AR, true), (Some(CR), Some(AR)));
    }

    #[test]
    fn ne_never_sends_and_er_and_su_send_on_their_outcome_only() {
        assert_eq!(due(mode("NE", "NE"), AA, true), (None, None));
        assert_eq!(due(mode("NE", "NE"), AR, true), (None, None));
        assert_eq!(due(mode("ER", "ER"), AA, true), (None, None));
        assert_eq!(due(mode("ER", "ER"), AE, true), (None, Some(AE)));
        assert_eq!(due(mode("ER", "ER"), AE, false), (Some(CE), Some(AE)));
        assert_eq!(due(mode("SU", "SU"), AA, true), (Some(CA), Some(AA)));
        assert_eq!(due(mode("SU", "SU"), AR, true), (None, None));
        assert_eq!(due(mode("AL", "NE"), AA, true), (Some(CA), None));
        assert_eq!(due(mode("NE", "AL"), AR, true), (None, Some(AR)));
    }

    #[test]
    fn an_empty_field_beside_a_valued_one_keeps_its_original_mode_meaning() {
        let only_application = mode("", "AL");
        assert!(only_application.is_enhanced());
        assert_eq!(
            due(only_application, AA, true),
            (None, Some(AA)),
            "MSH-15 reads NE"
        );
        assert_eq!(
            due(mode("AL", ""), AA, true),
            (Some(CA), Some(AA)),
            "MSH-16 reads AL"
        );
    }

    #[test]
    fn values_outside_table_0155_count_as_empty_and_case_and_spaces_do_not_matter() {
        assert_eq!(mode("XX", "YY"), AckMode::Original);
        assert_eq!(
            mode(" al", "ne "),
            AckMode::Enhanced {
                accept: AckCondition::Always,
                application: AckCondition::Never
            }
        );
    }

    #[test]
    fn before_the_outcome_al_is_certain_ne_is_never_and_er_or_su_may_be() {
        use AckCondition::*;
        let seen: Vec<_> = [Always, Never, OnError, OnSuccess]
            .into_iter()
            .map(|c| (c.expectation(), c.silence_means_success()))
            .collect();
        assert_eq!(
            seen,
            [
                (Expectation::Certain, None),
                (Expectation::None, None),
                (Expectation::Maybe, Some(true)),
                (Expectation::Maybe, Some(false)),
            ]
        );
        assert_eq!(AckMode::Original.conditions(), (Never, Always));
        let ack = "MSH|^~\\&|A|B|C|D|2024||ACK^R01^ACK|K1|P|2.5.1|||AL|AL";
        let header = read_header(ack.as_bytes());
        assert_eq!(AckMode::conditions_for(header.as_ref()), (Never, Never));
    }

    #[test]
    fn stored_acks_are_told_apart_by_their_msa_1() {
        let ca = "MSH|^~\\&|H|F|L|G|2024||ACK^R01^ACK|X1|P|2.5.1|||NE|NE\rMSA|CA|C1\r";
        let ae =
            "MSH|^~\\&|H|F|L|G|2024||ACK^R01^ACK|X2|P|2.5.1|||NE|NE\rMSA|AE|C1\rERR||PID^1^7\r";
        let (accept, application) = split_stored_acks(&format!("{ca}{ae}"));
        assert_eq!(accept.as_deref(), Some(ca));
        assert_eq!(application.as_deref(), Some(ae));
        assert_eq!(split_stored_acks(ae), (None, Some(ae.to_string())));
        assert_eq!(split_stored_acks(""), (None, None));
    }
}
