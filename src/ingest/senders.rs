//! Which senders an MLLP client with a certificate may send as: `HL7BRIDGE_MLLP_TLS_SENDERS`
//! maps the names in a client certificate to the MSH-3 / MSH-4 namespace ids its messages may
//! carry. A message outside its connection's senders is refused (AR) before anything else is
//! done with it, the resend shortcut included, so it changes no stored data.
//!
//! Syntax, as written in the setting:
//!
//! ```text
//! entries  = entry *( ";" entry )
//! entry    = identity "=" sender *( "," sender )
//! sender   = application "^" facility
//! ```
//!
//! `identity` is a client certificate's subject common name or one of its DNS names, compared
//! without regard to ASCII case. `application` and `facility` are the namespace ids (first
//! component, unescaped) of MSH-3 and MSH-4, compared exactly; `*` stands for any value,
//! empty included. Whitespace around items is ignored. Example:
//! `lab-a.example=LABSYS^LABFAC;ris.example=RIS^*,PACS^RADIOLOGY`.
//!
//! A certificate whose names match no entry may send nothing; one whose names match several
//! entries may send as any of their senders. Namespace ids holding `;`, `,`, `=` or `^` cannot
//! be written, nor can a universal id (HD-2) be required.

use hl7bridge_mllp::PeerIdentity;

use super::v2::{AckError, Header};

/// HL7 table 0357 has no code for an unauthorised sender; 207 (application internal error)
/// is the generic one, and ERR-8 says what is wrong.
const NOT_ALLOWED: u16 = 207;

/// `HL7BRIDGE_MLLP_TLS_SENDERS`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderMap {
    /// Identity, in ASCII lower case, and the senders it may send as.
    entries: Vec<(String, Vec<Sender>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Sender {
    application: Pattern,
    facility: Pattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exactly(String),
}

impl Pattern {
    fn parse(text: &str, field: &str, problems: &mut Vec<String>) -> Pattern {
        match text.trim() {
            "*" => Pattern::Any,
            "" => {
                problems.push(format!("an empty {field} (write * for any)"));
                Pattern::Any
            }
            value => Pattern::Exactly(value.to_string()),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exactly(expected) => expected == value,
        }
    }
}

impl SenderMap {
    /// Parses the setting's value, reporting every problem.
    pub fn parse(text: &str) -> Result<SenderMap, Vec<String>> {
        let mut problems = Vec::new();
        let mut entries: Vec<(String, Vec<Sender>)> = Vec::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((identity, senders)) = entry.split_once('=') else {
                problems.push(format!("{entry:?}: expected identity=application^facility"));
                continue;
            };
            let identity = identity.trim().to_ascii_lowercase();
            if identity.is_empty() {
                problems.push(format!("{entry:?}: no certificate identity before ="));
                continue;
            }
            if entries.iter().any(|(known, _)| *known == identity) {
                problems.push(format!("{identity} is mapped twice"));
                continue;
            }
            let senders = senders
                .split(',')
                .filter_map(|sender| Sender::parse(sender, &identity, &mut problems))
                .collect();
            entries.push((identity, senders));
        }
        if entries.is_empty() && problems.is_empty() {
            problems.push("maps no certificate identity".into());
        }
        if problems.is_empty() {
            Ok(SenderMap { entries })
        } else {
            Err(problems)
        }
    }

    /// Whether a connection with `identity` may send a message with `header`; the refusal
    /// names the field that is not allowed. A header that cannot be read is not allowed.
    pub fn check(&self, identity: &PeerIdentity, header: Option<&Header>) -> Result<(), AckError> {
        let allowed: Vec<&Sender> = self
            .entries
            .iter()
            .filter(|(known, _)| identity.names.iter().any(|n| n.eq_ignore_ascii_case(known)))
            .flat_map(|(_, senders)| senders)
            .collect();
        let certificate = match identity.names.first() {
            Some(name) => name.as_str(),
            None => "without a name",
        };
        let Some((application, facility)) = header.and_then(Header::namespace_ids) else {
            let message = format!(
                "MSH-3/MSH-4 cannot be read to check them against the client certificate \
                 {certificate}"
            );
            return Err(not_allowed(3, message));
        };
        if allowed
            .iter()
            .any(|s| s.application.matches(&application) && s.facility.matches(&facility))
        {
            return Ok(());
        }
        // Name MSH-4 only when MSH-3 alone would have been allowed.
        let field = if allowed.iter().any(|s| s.application.matches(&application)) {
            4
        } else {
            3
        };
        let message = format!(
            "MSH-3 {application} / MSH-4 {facility} is not an allowed sender for the client \
             certificate {certificate}"
        );
        Err(not_allowed(field, message))
    }
}

impl Sender {
    fn parse(text: &str, identity: &str, problems: &mut Vec<String>) -> Option<Sender> {
        let Some((application, facility)) = text.split_once('^') else {
            problems.push(format!(
                "{identity}: {:?}: expected application^facility",
                text.trim()
            ));
            return None;
        };
        let mut found = Vec::new();
        let sender = Sender {
            application: Pattern::parse(application, "application", &mut found),
            facility: Pattern::parse(facility, "facility", &mut found),
        };
        if facility.contains('^') {
            found.push("more than one ^".into());
        }
        problems.extend(found.iter().map(|p| format!("{identity}: {p}")));
        found.is_empty().then_some(sender)
    }
}

fn not_allowed(field: usize, message: String) -> AckError {
    AckError {
        code: NOT_ALLOWED,
        location: Some(("MSH".into(), 1, field)),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::v2::read_header;

    const MAP: &str = " lab-a.example = LABSYS^LABFAC ; ris.example=RIS^*,PACS^RADIOLOGY;";

    fn identity(names: &[&str]) -> PeerIdentity {
        PeerIdentity {
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn header(application: &str, facility: &str) -> Header {
        let text =
            format!("MSH|^~\\&|{application}|{facility}|EHR|HOSP|20240101||ORU^R01|1|P|2.5.1");
        read_header(text.as_bytes()).expect("a header")
    }

    fn check(names: &[&str], application: &str, facility: &str) -> Result<(), AckError> {
        let map = SenderMap::parse(MAP).unwrap();
        map.check(&identity(names), Some(&header(application, facility)))
    }

    #[test]
    fn a_certificate_may_send_as_its_mapped_senders() {
        assert!(check(&["lab-a.example"], "LABSYS", "LABFAC").is_ok());
        assert!(
            check(&["LAB-A.example"], "LABSYS", "LABFAC").is_ok(),
            "names ignore case"
        );
        assert!(
            check(&["x", "ris.example"], "RIS", "ANYWHERE").is_ok(),
            "any name counts"
        );
        assert!(
            check(&["ris.example"], "RIS", "").is_ok(),
            "* matches empty too"
        );
        assert!(check(&["ris.example"], "PACS", "RADIOLOGY").is_ok());
        assert!(
            check(&["lab-a.example"], "LABSYS^1.2.3^ISO", "LABFAC").is_ok(),
            "only the namespace id is compared"
        );
    }

    #[test]
    fn a_certificate_sending_as_another_sender_is_refused_naming_the_field() {
        let refused = check(&["lab-a.example"], "RIS", "LABFAC").unwrap_err();
        assert_eq!(refused.code, 207);
        assert_eq!(refused.location, Some(("MSH".into(), 1, 3)));
        assert!(
            refused.message.contains("MSH-3 RIS / MSH-4 LABFAC"),
            "{}",
            refused.message
        );
        assert!(
            refused.message.contains("lab-a.example"),
            "{}",
            refused.message
        );

        let refused = check(&["lab-a.example"], "LABSYS", "OTHERFAC").unwrap_err();
        assert_eq!(refused.location, Some(("MSH".into(), 1, 4)));
        assert!(check(&["ris.example"], "PACS", "CARDIOLOGY").is_err());
        assert!(check(&["labsys"], "LABSYS", "LABFAC").is_err(), "unmapped");
        assert!(check(&[], "LABSYS", "LABFAC").is_err(), "no name");
        assert!(
            check(&["lab-a.example"], "labsys", "LABFAC").is_err(),
            "ids are exact"
        );
    }

    #[test]
    fn a_header_that_cannot_be_read_is_refused() {
        let map = SenderMap::parse(MAP).unwrap();
        assert!(map.check(&identity(&["lab-a.example"]), None).is_err());
    }

    #[test]
    fn every_problem_in_the_setting_is_reported() {
        let problems = SenderMap::parse("a=X;=Y^Z;b=NOCARET;c=^F,A^B^C;a=P^Q;d=*^*").unwrap_err();
        assert_eq!(problems.len(), 6, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("a is mapped twice")));
        assert!(problems.iter().any(|p| p.contains("empty application")));
        assert_eq!(SenderMap::parse(" ; ").unwrap_err().len(), 1);
    }
}
