//! `hl7bridge send`: a minimal MLLP client, so that a user can feed a file to a running server
//! without netcat or a script. Each file is sent as one frame; the answers are printed with
//! their segments on separate lines.
//!
//! How many answer frames a file gets is read from each of its messages' MSH-15 and MSH-16, by
//! the server's own rules ([`AckMode::conditions_for`]): original mode, one frame; enhanced
//! mode, a frame of accept ACKs and then a frame of application ACKs, each only when its field
//! asks. An ACK that is always sent is waited for up to 30 s; one that depends on the outcome
//! (`ER`, `SU`) for the grace period only, and its absence then says what the outcome was.
//! Frames are told apart by MSA-1 (CA/CE/CR accept, AA/AE/AR application) and claimed only when
//! MSA-2 names a message of the file, so a late answer is never counted for the wrong file.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hl7bridge_mllp::FrameDecoder;

use crate::ingest::v2::{
    ack_messages, msa_field, read_header, split_frame, AckCondition, AckMode, Expectation, Header,
};
use crate::ingest::MAX_MESSAGES_PER_FRAME;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an ACK that depends on the outcome (`ER`, `SU`) is waited for, by default.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(1000);
/// The largest answer frame read.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// How the answers are waited for.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    /// For an ACK that is always sent.
    pub timeout: Duration,
    /// For an ACK sent or not depending on the outcome.
    pub grace: Duration,
}

impl Waits {
    pub fn with_grace(grace: Duration) -> Waits {
        Waits {
            timeout: ANSWER_TIMEOUT,
            grace,
        }
    }
}

/// Sends every file and prints each answer. Returns whether every file was accepted.
pub fn send_files(addr: SocketAddr, files: &[String], waits: Waits) -> anyhow::Result<bool> {
    let mut payloads = Vec::with_capacity(files.len());
    for file in files {
        let payload = std::fs::read(Path::new(file)).with_context(|| format!("reading {file}"))?;
        payloads.push((file.clone(), payload));
    }
    send_payloads(addr, &payloads, waits)
}

/// Sends each (name, payload) as one frame on one connection and prints the answers under its
/// name. Returns whether every payload was accepted (see [`accepted`]).
pub fn send_payloads(
    addr: SocketAddr,
    payloads: &[(String, Vec<u8>)],
    waits: Waits,
) -> anyhow::Result<bool> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connecting to MLLP on {addr}"))?;
    let mut link = Link {
        stream,
        frames: FrameDecoder::new(MAX_ANSWER_BYTES),
    };
    // Control ids already sent, by the name they were sent under: a late answer is shown there.
    let mut sent: HashMap<String, String> = HashMap::new();
    let mut all_accepted = true;
    for (index, (name, payload)) in payloads.iter().enumerate() {
        let messages = outgoing(payload);
        link.stream.write_all(&hl7bridge_mllp::encode(payload))?;
        let exchange = link
            .answers(&messages, waits)
            .with_context(|| format!("waiting for the ACK to {name}"))?;
        for late in &exchange.late {
            let owner = late_owner(late, &sent);
            println!(
                "{owner} (late, not counted for {name}):\n{}",
                late.iter()
                    .map(|a| summary(a))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            all_accepted &= refusals(late).is_empty();
        }
        let mut lines: Vec<String> = exchange.acks.iter().map(|a| summary(a)).collect();
        let mut file_accepted = true;
        for message in &messages {
            let verdict = judge(message, &exchange.acks);
            lines.extend(verdict.note);
            file_accepted &= verdict.accepted;
        }
        let nothing_expected = expected_frames(&messages) == [Expectation::None; 2];
        if nothing_expected && file_accepted {
            let last = index + 1 == payloads.len();
            let wait = if last { waits.grace } else { Duration::ZERO };
            if !link.still_open(wait) {
                lines.push("the server closed the connection".to_string());
                file_accepted = false;
            }
        }
        println!("{name}:\n{}", lines.join("\n"));
        all_accepted &= file_accepted;
        for message in &messages {
            if let Some(id) = &message.control_id {
                sent.insert(id.clone(), name.clone());
            }
        }
    }
    Ok(all_accepted)
}

/// One message of an outgoing payload, as the server will read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outgoing {
    /// What the server's MSA-2 will say: MSH-10 as sent (empty when absent); `None` when it
    /// cannot be foretold (no readable header, or delimiters the server replaces), so any MSA-2
    /// is taken for it.
    control_id: Option<String>,
    /// When the accept ACK and the application ACK are sent.
    accept: AckCondition,
    application: AckCondition,
}

impl Outgoing {
    fn of(header: Option<&Header>) -> Outgoing {
        let (accept, application) = AckMode::conditions_for(header);
        let control_id = header
            .filter(|h| h.delimiters.is_ok())
            .map(|h| h.control_id.clone().unwrap_or_default());
        Outgoing {
            control_id,
            accept,
            application,
        }
    }

    fn claims(&self, msa_2: &str) -> bool {
        self.control_id.as_deref().is_none_or(|id| id == msa_2)
    }
}

/// The messages of a payload, split as the server splits it: a frame that cannot be split, or
/// that holds no message or too many, is answered as one message with the first header.
fn outgoing(payload: &[u8]) -> Vec<Outgoing> {
    match split_frame(payload) {
        Ok(frame) if (1..=MAX_MESSAGES_PER_FRAME).contains(&frame.messages.len()) => frame
            .messages
            .iter()
            .map(|m| Outgoing::of(m.header()))
            .collect(),
        _ => vec![Outgoing::of(read_header(payload).as_ref())],
    }
}

/// Whether the frame of accept ACKs and the frame of application ACKs will come: a frame is
/// certain when one of its messages' ACKs is, and may come when one of them may.
fn expected_frames(messages: &[Outgoing]) -> [Expectation; 2] {
    let most = |pick: fn(&Outgoing) -> AckCondition| {
        messages
            .iter()
            .map(|m| pick(m).expectation())
            .max()
            .unwrap_or(Expectation::None)
    };
    [most(|m| m.accept), most(|m| m.application)]
}

/// An accept ACK says CA, CE or CR; an application ACK AA, AE or AR.
fn is_accept_ack(ack: &str) -> bool {
    msa_field(ack, 1).starts_with('C')
}

/// The MSA-1 codes in `acks` that do not say AA or CA.
fn refusals(acks: &[String]) -> Vec<&str> {
    acks.iter()
        .map(|a| msa_field(a, 1))
        .filter(|code| !matches!(*code, "AA" | "CA"))
        .collect()
}

/// What the answers (or their absence) say of one message.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    accepted: bool,
    /// A line to print when an ACK did not come.
    note: Option<String>,
}

/// Judges one message by the ACKs of its payload that name it: accepted when its application
/// ACK is AA; without one, when none was asked for and its accept ACK is CA; without either,
/// when nothing was due. No ACK where one was always due, or any other code, refuses. An ACK
/// sent on error only (`ER`) that did not come within the grace period says success; one sent
/// on success only (`SU`) says failure.
fn judge(message: &Outgoing, acks: &[String]) -> Verdict {
    let mine: Vec<&String> = acks
        .iter()
        .filter(|a| message.claims(msa_field(a, 2)))
        .collect();
    let find = |accept: bool| {
        mine.iter()
            .find(|a| is_accept_ack(a) == accept)
            .map(|a| msa_field(a, 1))
    };
    let (accept_code, application_code) = (find(true), find(false));
    let id = message.control_id.as_deref().unwrap_or("?");
    let mut missing = Vec::new();
    let mut inferred = None;
    for (kind, code, condition) in [
        ("application", application_code, message.application),
        ("accept", accept_code, message.accept),
    ] {
        if code.is_some() || condition == AckCondition::Never {
            continue;
        }
        let why = match condition.silence_means_success() {
            Some(true) => "sent on error only",
            Some(false) => "sent on success only",
            None => "always due",
        };
        // The wait may have ended early (the other ACK settled the answer): no time is named.
        missing.push(format!("no {kind} ACK for {id} ({why})"));
        inferred = inferred.or(Some(condition.silence_means_success().unwrap_or(false)));
    }
    let received_refusal = [accept_code, application_code]
        .into_iter()
        .flatten()
        .any(|code| !matches!(code, "AA" | "CA"));
    let accepted = !received_refusal
        && match (application_code, accept_code) {
            (Some(code), _) => code == "AA",
            _ if message.application != AckCondition::Never => inferred == Some(true),
            (None, Some(code)) => code == "CA",
            (None, None) => inferred.unwrap_or(true),
        };
    let nothing_came = accept_code.is_none() && application_code.is_none();
    let note = if nothing_came && accepted {
        let asked = if missing.is_empty() {
            "none was asked for; `hl7bridge messages` lists what the server decided".to_string()
        } else {
            missing.join("; ")
        };
        Some(format!("nothing was due for {id}: {asked}"))
    } else if missing.is_empty() {
        None
    } else {
        Some(missing.join("\n"))
    };
    Verdict { accepted, note }
}

/// Where a late answer belongs: the name its control id was sent under, if it was.
fn late_owner(acks: &[String], sent: &HashMap<String, String>) -> String {
    acks.first()
        .and_then(|a| sent.get(msa_field(a, 2)))
        .map_or_else(
            || "an answer to no message sent now".to_string(),
            Clone::clone,
        )
}

/// The answers one payload got.
#[derive(Debug, Default)]
struct Exchange {
    /// ACK messages naming the payload's messages, in the order received.
    acks: Vec<String>,
    /// Frames naming no message of the payload (a late answer to an earlier one), by frame.
    late: Vec<Vec<String>>,
}

/// One MLLP connection. Frames are decoded from a buffer, since two frames written back to
/// back can arrive in one read.
struct Link {
    stream: TcpStream,
    frames: FrameDecoder,
}

impl Link {
    /// Reads the frames a payload of `messages` can get: those certain to come within the
    /// timeout, those that may come within the grace period after them. The accept frame goes
    /// before the application frame, so an application frame ends the wait for an accept one.
    fn answers(&mut self, messages: &[Outgoing], waits: Waits) -> anyhow::Result<Exchange> {
        let [mut accept, mut application] = expected_frames(messages);
        let mut exchange = Exchange::default();
        let mut deadline: Option<(Expectation, Instant)> = None;
        loop {
            let want = accept.max(application);
            let wait = match want {
                Expectation::None => return Ok(exchange),
                Expectation::Maybe => waits.grace,
                Expectation::Certain => waits.timeout,
            };
            let until = match deadline {
                Some((kind, until)) if kind == want => until,
                _ => Instant::now() + wait,
            };
            deadline = Some((want, until));
            let Some(frame) = self.next_frame(until)? else {
                anyhow::ensure!(
                    want != Expectation::Certain,
                    "no ACK came within {} s",
                    waits.timeout.as_secs()
                );
                return Ok(exchange);
            };
            let acks = ack_messages(&String::from_utf8_lossy(&frame));
            let ours = !acks.is_empty()
                && acks
                    .iter()
                    .all(|a| messages.iter().any(|m| m.claims(msa_field(a, 2))));
            if !ours {
                exchange.late.push(acks);
                continue;
            }
            if acks.iter().any(|a| is_accept_ack(a)) {
                accept = Expectation::None;
            }
            if acks.iter().any(|a| !is_accept_ack(a)) {
                accept = Expectation::None;
                application = Expectation::None;
            }
            deadline = None;
            exchange.acks.extend(acks);
        }
    }

    /// The next frame, or `None` once `deadline` passes without one.
    fn next_frame(&mut self, deadline: Instant) -> anyhow::Result<Option<Vec<u8>>> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(frame) = self.frames.next_frame()? {
                return Ok(Some(frame.to_vec()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => anyhow::bail!("the server closed the connection without answering"),
                Ok(n) => self.frames.push(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether the server still holds the connection open, waiting up to `wait` for it to
    /// close (not at all for zero).
    fn still_open(&mut self, wait: Duration) -> bool {
        let mut byte = [0u8; 1];
        let peeked = if wait.is_zero() {
            let _ = self.stream.set_nonblocking(true);
            let peeked = self.stream.peek(&mut byte);
            let _ = self.stream.set_nonblocking(false);
            peeked
        } else {
            let _ = self.stream.set_read_timeout(Some(wait));
            self.stream.peek(&mut byte)
        };
        match peeked {
            Ok(n) => n > 0,
            Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }
}

/// The answer's MSA segments (ACK code and control id) and, for each ERR, its location and
/// table 0357 code. The rest of an ACK (the header, MSA-3's and ERR's free text, which a
/// receiver may fill with what it read) is left out of the terminal: no message content, so
/// no patient data, is printed; what was said about a message stays in the message store.
fn summary(answer: &str) -> String {
    let separator = answer.chars().nth(3).unwrap_or('|');
    answer
        .split('\r')
        .filter_map(|segment| {
            let kept = if segment.starts_with("MSA") {
                3
            } else if segment.starts_with("ERR") {
                5
            } else {
                return None;
            };
            let fields: Vec<&str> = segment.split(separator).take(kept).collect();
            Some(fields.join(&separator.to_string()))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use AckCondition::*;
    use Expectation as E;

    fn message(control_id: &str, msh_15: &str, msh_16: &str) -> String {
        format!(
            "MSH|^~\\&|LAB|F|H|G|2024||ORU^R01|{control_id}|P|2.5.1|||{msh_15}|{msh_16}\rPID|1\r"
        )
    }

    fn ack(code: &str, control_id: &str) -> String {
        format!("MSH|^~\\&|H|G|LAB|F|2024||ACK^R01^ACK|X|P|2.5.1\rMSA|{code}|{control_id}\r")
    }

    fn one(msh_15: &str, msh_16: &str) -> Outgoing {
        let messages = outgoing(message("C1", msh_15, msh_16).as_bytes());
        assert_eq!(messages.len(), 1);
        messages[0].clone()
    }

    #[test]
    fn the_printed_summary_holds_codes_and_locations_only() {
        let ack = "MSH|^~\\&|HL7BRIDGE|H|LAB|F|2024||ACK^R01^ACK|X|P|2.5.1\r\
                   MSA|AE|C1\rERR||PID^1^7|102^Data type error^HL70357|E||||some text\r";
        assert_eq!(
            summary(ack),
            "MSA|AE|C1\nERR||PID^1^7|102^Data type error^HL70357|E"
        );
        // Another receiver's MSA-3 text may quote what it read: left out too.
        let quoting = "MSH|^~\\&|OTHER|H|LAB|F|2024||ACK|X|P|2.3\rMSA|AE|C2|bad name Quill^Ada\r";
        assert_eq!(summary(quoting), "MSA|AE|C2");
    }

    #[test]
    fn the_frames_expected_follow_msh_15_and_msh_16_as_the_server_reads_them() {
        let frames = |msh_15, msh_16| expected_frames(&[one(msh_15, msh_16)]);
        assert_eq!(frames("", ""), [E::None, E::Certain], "original mode");
        assert_eq!(frames("AL", "AL"), [E::Certain, E::Certain]);
        assert_eq!(frames("NE", "NE"), [E::None, E::None]);
        assert_eq!(frames("ER", "SU"), [E::Maybe, E::Maybe]);
        assert_eq!(
            frames("", "ER"),
            [E::None, E::Maybe],
            "empty MSH-15 reads NE"
        );
        assert_eq!(
            frames("AL", ""),
            [E::Certain, E::Certain],
            "empty MSH-16 reads AL"
        );
        let inbound_ack = "MSH|^~\\&|LAB|F|H|G|2024||ACK^R01^ACK|K1|P|2.5.1|||AL|AL\rMSA|CA|Z\r";
        assert_eq!(
            expected_frames(&outgoing(inbound_ack.as_bytes())),
            [E::None, E::None],
            "an ACK is never acknowledged"
        );
    }

    #[test]
    fn a_batch_expects_a_frame_when_any_of_its_messages_does() {
        let batch = format!(
            "BHS|^~\\&|LAB|F\r{}{}BTS|2\r",
            message("B1", "NE", "ER"),
            message("B2", "AL", "NE")
        );
        let messages = outgoing(batch.as_bytes());
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1].control_id.as_deref(), Some("B2"));
        assert_eq!(expected_frames(&messages), [E::Certain, E::Maybe]);
        assert_eq!(
            outgoing(b"not hl7"),
            [Outgoing {
                control_id: None,
                accept: Never,
                application: Always
            }],
            "answered as one message, whatever MSA-2 says"
        );
    }

    #[test]
    fn the_application_ack_decides_and_without_one_the_accept_ack() {
        let judge = |m: &Outgoing, acks: &[String]| judge(m, acks).accepted;
        let al = one("AL", "AL");
        assert!(judge(&al, &[ack("CA", "C1"), ack("AA", "C1")]));
        assert!(!judge(&al, &[ack("CA", "C1"), ack("AE", "C1")]));
        assert!(!judge(&al, &[ack("CE", "C1"), ack("AA", "C1")]));
        assert!(
            !judge(&al, &[ack("CA", "C1")]),
            "the AA that was due is missing"
        );
        assert!(
            !judge(&al, &[ack("CA", "C9"), ack("AA", "C9")]),
            "another message's"
        );
        let original = one("", "");
        assert!(judge(&original, &[ack("AA", "C1")]));
        assert!(!judge(&original, &[ack("AR", "C1")]));
        let al_ne = one("AL", "NE");
        assert!(judge(&al_ne, &[ack("CA", "C1")]));
        assert!(!judge(&al_ne, &[ack("CR", "C1")]));
    }

    #[test]
    fn silence_means_what_the_condition_makes_it_mean() {
        let ne = judge(&one("NE", "NE"), &[]);
        assert!(ne.accepted);
        assert_eq!(
            ne.note.as_deref(),
            Some(
                "nothing was due for C1: none was asked for; `hl7bridge messages` lists what \
                 the server decided"
            )
        );
        let er = judge(&one("ER", "ER"), &[]);
        assert!(er.accepted, "ER sends only on error");
        assert!(er
            .note
            .unwrap()
            .starts_with("nothing was due for C1: no application ACK"));
        assert!(!judge(&one("ER", "ER"), &[ack("AE", "C1")]).accepted);
        let su = judge(&one("SU", "SU"), &[]);
        assert!(!su.accepted, "SU sends only on success");
        assert!(su.note.unwrap().contains("sent on success only"));
        assert!(judge(&one("SU", "SU"), &[ack("CA", "C1"), ack("AA", "C1")]).accepted);
        assert!(judge(&one("ER", "NE"), &[]).accepted);
        assert!(!judge(&one("SU", "NE"), &[]).accepted);
    }
}
