//! HL7v2 over MLLP: malformed frames, headers, segments and values, and misbehaving
//! connections, each with the answer class it must get. `$N` in a payload becomes the case's
//! number, so that every case has its own control id, patient and order numbers.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Mismatch, MAX_FRAME_BYTES};
use crate::support::{field, read_frame, TestApp};

/// What a case must be answered with.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// An ACK with this MSA-1 and an ERR segment; when given, ERR-2 names this location.
    Refused(&'static str, Option<&'static str>),
    /// AA: the input is legitimately accepted (the case's name says why).
    Accepted,
    /// No ACK is possible (the frame never ended): the connection closes without one.
    Closed,
    /// The client went away; nothing to read. The next health check shows the server went on.
    Gone,
}

/// How a case's bytes are sent.
enum Send {
    /// One MLLP frame around the payload.
    Frame(Vec<u8>),
    /// These bytes as they are, framing included (or not).
    Raw(Vec<u8>),
    /// One frame, a byte at a time.
    Trickle(Vec<u8>),
    /// These bytes, then a reset instead of an orderly close.
    Reset(Vec<u8>),
    /// This many connections, each sent these bytes and dropped.
    Abandon(usize, Vec<u8>),
    /// This many idle connections held open while a frame is sent on another.
    BesideIdle(usize, Vec<u8>),
    /// A frame started and left hanging while a frame is sent on another connection.
    BesideStalled(Vec<u8>),
}

struct Case {
    name: &'static str,
    send: Send,
    expect: Expect,
}

use Expect::{Accepted, Closed, Gone, Refused};

fn case(name: &'static str, send: Send, expect: Expect) -> Case {
    Case { name, send, expect }
}

const MSH: &str =
    "MSH|^~\\&|BADLAB|BADFAC|HL7BRIDGE|GENHOSP|20240630120030-0500||ORU^R01^ORU_R01|BI$N|P|2.5.1";
const PID: &str = "PID|1||BIM$N^^^BADLAB^MR||Fennick^Ola||19800101|F";
const OBR: &str = "OBR|1||BIF$N^BADLAB|24331-1^Lipid panel^LN|||20240630101500-0500";
const OBX: &str = "OBX|1|NM|2093-3^Cholesterol^LN||100|mg/dL^^UCUM|||||F";

/// Segments joined with CR, each ended by one.
fn segments(parts: &[&str]) -> Vec<u8> {
    parts
        .iter()
        .map(|s| format!("{s}\r"))
        .collect::<String>()
        .into_bytes()
}

/// A valid ORU^R01 with one of its four segments replaced (`"MSH"`, `"PID"`, `"OBR"` or
/// `"OBX"`, by name).
fn oru_with(segment: &str, replacement: &str) -> Vec<u8> {
    let pick = |name: &str, default: &'static str| -> String {
        if name == segment {
            replacement.to_string()
        } else {
            default.to_string()
        }
    };
    let parts = [
        pick("MSH", MSH),
        pick("PID", PID),
        pick("OBR", OBR),
        pick("OBX", OBX),
    ];
    segments(&parts.iter().map(String::as_str).collect::<Vec<_>>())
}

fn oru() -> Vec<u8> {
    segments(&[MSH, PID, OBR, OBX])
}

fn msh_with(from: &str, to: &str) -> Vec<u8> {
    assert!(MSH.contains(from), "{from}");
    oru_with("MSH", &MSH.replace(from, to))
}

fn pid_with(from: &str, to: &str) -> Vec<u8> {
    assert!(PID.contains(from), "{from}");
    oru_with("PID", &PID.replace(from, to))
}

fn framed(payload: &[u8]) -> Vec<u8> {
    hl7bridge_mllp::encode(payload)
}

fn with_bytes(mut message: Vec<u8>, at: &str, bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(&message).into_owned();
    let index = text.find(at).expect("the marker is there") + at.len();
    message.splice(index..index, bytes.iter().copied());
    message
}

fn framing() -> Vec<Case> {
    let message = oru();
    let half = message[..message.len() / 2].to_vec();
    let mut unterminated = vec![0x0b];
    unterminated.extend_from_slice(&message);
    let mut lone_end_block = unterminated.clone();
    lone_end_block.push(0x1c);
    let mut junk_first = b"hello\r\n\0\0".to_vec();
    junk_first.extend(framed(&message));
    let mut restarted = vec![0x0b];
    restarted.extend_from_slice(&half);
    restarted.extend(framed(&message));
    let oversized = [oru(), vec![b'X'; MAX_FRAME_BYTES + 1]].concat();
    vec![
        case(
            "a frame cut off halfway, then EOF, closes without an ACK",
            Send::Raw([vec![0x0b], half.clone()].concat()),
            Closed,
        ),
        case(
            "a frame without its end block, then EOF, closes without an ACK",
            Send::Raw(unterminated.clone()),
            Closed,
        ),
        case(
            "a frame ended by 0x1C alone, then EOF, closes without an ACK",
            Send::Raw(lone_end_block),
            Closed,
        ),
        case(
            "a start block alone, then EOF, closes without an ACK",
            Send::Raw(vec![0x0b]),
            Closed,
        ),
        case(
            "a trailer outside any frame is skipped: EOF closes without an ACK",
            Send::Raw(vec![0x1c, 0x0d]),
            Closed,
        ),
        case(
            "junk before a frame is skipped and the frame accepted",
            Send::Raw(junk_first),
            Accepted,
        ),
        case(
            "a start block inside a frame is payload: the two patients it makes are refused",
            Send::Raw(restarted),
            Refused("AE", Some("PID^2^3")),
        ),
        case(
            "an empty frame is refused",
            Send::Frame(Vec::new()),
            Refused("AR", None),
        ),
        case(
            "a frame of blank lines is refused",
            Send::Frame(b"\r\n\r\n\r".to_vec()),
            Refused("AR", None),
        ),
        case(
            "a frame of NUL bytes is refused",
            Send::Frame(vec![0; 64]),
            Refused("AR", None),
        ),
        case(
            "a frame over HL7BRIDGE_MLLP_MAX_FRAME_BYTES is refused",
            Send::Frame(oversized),
            Refused("AR", None),
        ),
        case(
            "a frame over the limit without an MSH is refused",
            Send::Frame(vec![b'Z'; MAX_FRAME_BYTES + 10]),
            Refused("AR", None),
        ),
        case(
            "a client that resets mid-frame leaves the server serving",
            Send::Reset(unterminated.clone()),
            Gone,
        ),
        case(
            "a client that resets after a whole frame leaves the server serving",
            Send::Reset(framed(&message)),
            Gone,
        ),
        case(
            "a message sent a byte at a time is accepted",
            Send::Trickle(message.clone()),
            Accepted,
        ),
        case(
            "a stalled half frame on one connection does not hold up another",
            Send::BesideStalled(message.clone()),
            Accepted,
        ),
        case(
            "200 connections opened and dropped mid-frame leave the server serving",
            Send::Abandon(200, [vec![0x0b], half.clone()].concat()),
            Gone,
        ),
        case(
            "200 connections opened and dropped at once leave the server serving",
            Send::Abandon(200, Vec::new()),
            Gone,
        ),
        case(
            "50 idle connections do not keep a new one from being answered",
            Send::BesideIdle(50, message.clone()),
            Accepted,
        ),
        case(
            "a UTF-8 byte-order mark before MSH is accepted: it is skipped",
            Send::Frame([b"\xEF\xBB\xBF".to_vec(), message.clone()].concat()),
            Accepted,
        ),
        case(
            "LF segment terminators are accepted when the message has no CR",
            Send::Frame(
                String::from_utf8(message.clone())
                    .unwrap()
                    .replace('\r', "\n")
                    .into_bytes(),
            ),
            Accepted,
        ),
    ]
}

fn headers() -> Vec<Case> {
    let field_sep_hash = String::from_utf8(oru()).unwrap().replace('|', "#");
    let mixed_sep = format!(
        "{MSH}\r{}",
        String::from_utf8(segments(&[PID, OBR, OBX]))
            .unwrap()
            .replace('|', "#")
    );
    vec![
        case("a message without MSH is refused", Send::Frame(segments(&[PID, OBR, OBX])), Refused("AR", None)),
        case("an MSH alone of three letters is refused", Send::Frame(b"MSH\r".to_vec()), Refused("AR", None)),
        case("an MSH without encoding characters is refused", Send::Frame(msh_with("|^~\\&|", "||")), Refused("AR", None)),
        case("encoding characters that repeat one character are refused", Send::Frame(msh_with("^~\\&", "^^^^")), Refused("AR", None)),
        case("a letter as field separator is refused", Send::Frame(String::from_utf8(oru()).unwrap().replace('|', "A").into_bytes()), Refused("AR", None)),
        case("a field separator of # used throughout is accepted: MSH-1 chooses it", Send::Frame(field_sep_hash.into_bytes()), Accepted),
        case("segments written with another separator than MSH-1 are refused", Send::Frame(mixed_sep.into_bytes()), Refused("AR", None)),
        case("a NUL in MSH-9 is refused", Send::Frame(msh_with("ORU^R01", "OR\0U^R01")), Refused("AR", None)),
        case("a missing MSH-9 is refused naming MSH-9", Send::Frame(msh_with("ORU^R01^ORU_R01", "")), Refused("AR", Some("MSH^1^9"))),
        case("an MSH-9 without a trigger event is refused", Send::Frame(msh_with("ORU^R01^ORU_R01", "ORU")), Refused("AR", None)),
        case("a missing MSH-10 is refused naming MSH-10", Send::Frame(msh_with("BI$N", "")), Refused("AR", Some("MSH^1^10"))),
        case("a missing MSH-12 is refused naming MSH-12", Send::Frame(msh_with("|2.5.1", "|")), Refused("AR", Some("MSH^1^12"))),
        case("version 9.9 is refused", Send::Frame(msh_with("2.5.1", "9.9")), Refused("AR", Some("MSH^1^12"))),
        case("a version of letters is refused", Send::Frame(msh_with("2.5.1", "abc")), Refused("AR", Some("MSH^1^12"))),
        case("an unknown message type is refused", Send::Frame(msh_with("ORU^R01^ORU_R01", "ZZZ^Z01")), Refused("AR", None)),
        case("an unknown ADT event is refused", Send::Frame(msh_with("ORU^R01^ORU_R01", "ADT^Z99")), Refused("AR", None)),
        case("a scheduling event not handled is refused", Send::Frame(msh_with("ORU^R01^ORU_R01", "SIU^S16^SIU_S12")), Refused("AR", None)),
        case("a scheduling message without SCH is a content error naming SCH", Send::Frame(msh_with("ORU^R01^ORU_R01", "SIU^S12^SIU_S12")), Refused("AE", Some("SCH^1"))),
        case("a query (not handled) is refused", Send::Frame(msh_with("ORU^R01^ORU_R01", "QRY^A19^QRY_A19")), Refused("AR", None)),
        case("a garbage MSH-7 is accepted: nothing is made from MSH-7", Send::Frame(msh_with("20240630120030-0500", "yesterday")), Accepted),
        case("an unknown MSH-18 is tolerated: bytes are read as UTF-8, else windows-1252 (documented)", Send::Frame(msh_with("|2.5.1", "|2.5.1||||||XYZ-99")), Accepted),
        case("invalid UTF-8 under MSH-18 UNICODE UTF-8 is read as windows-1252 and accepted (documented fallback)", Send::Frame(with_bytes(msh_with("|2.5.1", "|2.5.1||||||UNICODE UTF-8"), "Fennick", b"\xe9\xff")), Accepted),
        case("Latin-1 bytes under MSH-18 8859/1 are accepted", Send::Frame(with_bytes(msh_with("|2.5.1", "|2.5.1||||||8859/1"), "Fennick", b"\xe9")), Accepted),
        case("an unknown MSH-11 processing id is refused naming MSH-11", Send::Frame(msh_with("|P|", "|X|")), Refused("AR", Some("MSH^1^11"))),
    ]
}

fn content() -> Vec<Case> {
    let reps = |n: usize, item: &str| vec![item; n].join("~");
    vec![
        case("a NUL byte in a patient name is refused (the ERR names the FHIR element)", Send::Frame(pid_with("Fennick", "Fen\0nick")), Refused("AE", None)),
        case("OBX before OBR is refused as a sequence error", Send::Frame(segments(&[MSH, PID, OBX, OBR])), Refused("AE", None)),
        case("PID after OBR is read where it stands: accepted, nothing is lost", Send::Frame(segments(&[MSH, OBR, PID, OBX])), Accepted),
        case("a result without PID is refused", Send::Frame(segments(&[MSH, OBR, OBX])), Refused("AE", None)),
        case("two PIDs in one result are refused", Send::Frame(segments(&[MSH, PID, PID, OBR, OBX])), Refused("AE", None)),
        case("a result with no OBR is refused", Send::Frame(segments(&[MSH, PID, OBX])), Refused("AE", None)),
        case("a segment name in lower case is refused", Send::Frame(segments(&[MSH, &PID.replace("PID", "pid"), OBR, OBX])), Refused("AR", None)),
        case("a segment without a name is refused", Send::Frame(segments(&[MSH, "|1||X", PID, OBR, OBX])), Refused("AR", None)),
        case("a birth date in month 13 is refused naming PID-7", Send::Frame(pid_with("19800101", "19801301")), Refused("AE", Some("PID^1^7"))),
        case("a birth date of letters is refused naming PID-7", Send::Frame(pid_with("19800101", "nineteen")), Refused("AE", Some("PID^1^7"))),
        case("a birth date of 30 February is refused naming PID-7", Send::Frame(pid_with("19800101", "19800230")), Refused("AE", Some("PID^1^7"))),
        case("an ISO date in OBX-14 is refused naming OBX-14", Send::Frame(oru_with("OBX", &format!("{OBX}|||2024-06-30"))), Refused("AE", Some("OBX^1^14"))),
        case("an hour of 25 in OBR-7 is refused naming OBR-7", Send::Frame(oru_with("OBR", &OBR.replace("20240630101500", "20240630251500"))), Refused("AE", Some("OBR^1^7"))),
        case("a zone of +99 in OBR-7 is refused naming OBR-7", Send::Frame(oru_with("OBR", &OBR.replace("-0500", "+9900"))), Refused("AE", Some("OBR^1^7"))),
        case("text in a numeric OBX is refused naming OBX-5", Send::Frame(oru_with("OBX", &OBX.replace("||100|", "||high|"))), Refused("AE", Some("OBX^1^5"))),
        case("an exponent in a numeric OBX is refused naming OBX-5", Send::Frame(oru_with("OBX", &OBX.replace("||100|", "||1e400|"))), Refused("AE", Some("OBX^1^5"))),
        case("a numeric OBX of a million digits is refused", Send::Frame(oru_with("OBX", &OBX.replace("||100|", &format!("||{}|", "9".repeat(1_000_000))))), Refused("AE", None)),
        case("two numbers in one numeric OBX are refused naming OBX-5", Send::Frame(oru_with("OBX", &OBX.replace("||100|", "||1~2|"))), Refused("AE", Some("OBX^1^5"))),
        case("an unknown OBX value type keeps its value as text: accepted", Send::Frame(oru_with("OBX", &OBX.replace("|NM|", "|QQ|"))), Accepted),
        case("an unknown result status is refused naming OBX-11", Send::Frame(oru_with("OBX", &OBX.replace("|||||F", "|||||Q"))), Refused("AE", Some("OBX^1^11"))),
        case("an unknown administrative sex is refused naming PID-8", Send::Frame(pid_with("|F", "|Q")), Refused("AE", Some("PID^1^8"))),
        case("5,000 repetitions of PID-3 are refused", Send::Frame(pid_with("BIM$N^^^BADLAB^MR", &reps(5000, "X^^^BADLAB^MR"))), Refused("AR", None)),
        case("1,001 repetitions of PID-5 are refused", Send::Frame(pid_with("Fennick^Ola", &reps(1001, "Fennick^Ola"))), Refused("AR", None)),
        case("a million empty fields are refused before they cost memory", Send::Frame([oru(), b"ZZZ".to_vec(), vec![b'|'; 1_000_000]].concat()), Refused("AR", None)),
        case("an invalid hex escape is kept as written: accepted", Send::Frame(pid_with("Fennick", "Fen\\XZZ\\nick")), Accepted),
        case("an unterminated hex escape is kept as written: accepted", Send::Frame(pid_with("Fennick", "Fennick\\X41")), Accepted),
        case("a lone escape character ending a field is kept: accepted", Send::Frame(pid_with("Fennick", "Fennick\\")), Accepted),
        case("a hex escape of 100,000 digits is accepted as text", Send::Frame(pid_with("Fennick", &format!("\\X{}\\", "41".repeat(50_000)))), Accepted),
        case("a hex escape that decodes to a NUL is refused (the ERR names the FHIR element)", Send::Frame(pid_with("Fennick", "Fen\\X00\\nick")), Refused("AE", None)),
        case("a hex escape that decodes to the MLLP end block cannot end the frame: refused (the ERR names the FHIR element)", Send::Frame(pid_with("Fennick", "Fen\\X1C0D\\nick")), Refused("AE", None)),
        case("a family name of 200,000 characters is stored whole: accepted", Send::Frame(pid_with("Fennick", &"F".repeat(200_000))), Accepted),
        case("a text result of 500,000 characters is accepted: reports can be long", Send::Frame([oru(), format!("OBX|2|TX|8251-1^Comment^LN||{}||||||F\r", "t".repeat(500_000)).into_bytes()].concat()), Accepted),
    ]
}

fn batches() -> Vec<Case> {
    let message = String::from_utf8(oru()).unwrap();
    let batch = |head: &str, tail: &str| format!("{head}{message}{tail}").into_bytes();
    vec![
        case(
            "a batch without BTS is refused",
            Send::Frame(batch("BHS|^~\\&|BADLAB|BADFAC\r", "")),
            Refused("AR", None),
        ),
        case(
            "a BTS count that disagrees: the incomplete batch is refused naming BTS-1",
            Send::Frame(batch("BHS|^~\\&|BADLAB|BADFAC\r", "BTS|5\r")),
            Refused("AR", Some("BTS^1^1")),
        ),
        case(
            "a file without FTS is refused",
            Send::Frame(batch(
                "FHS|^~\\&|BADLAB|BADFAC\rBHS|^~\\&|BADLAB|BADFAC\r",
                "BTS|1\r",
            )),
            Refused("AR", None),
        ),
        case(
            "FTS before BTS is refused",
            Send::Frame(batch(
                "FHS|^~\\&|BADLAB|BADFAC\rBHS|^~\\&|BADLAB|BADFAC\r",
                "FTS|1\rBTS|1\r",
            )),
            Refused("AR", None),
        ),
        case(
            "a batch inside a batch is refused",
            Send::Frame(batch(
                "BHS|^~\\&|BADLAB|BADFAC\rBHS|^~\\&|BADLAB|BADFAC\r",
                "BTS|1\rBTS|1\r",
            )),
            Refused("AR", None),
        ),
        case(
            "a BHS without encoding characters: its messages carry their own MSH, accepted",
            Send::Frame(batch("BHS|\r", "BTS|1\r")),
            Accepted,
        ),
        case(
            "BTS without BHS is refused",
            Send::Frame(batch("", "BTS|1\r")),
            Refused("AR", None),
        ),
        case(
            "an empty file is refused",
            Send::Frame(b"FHS|^~\\&|BADLAB\rFTS|0\r".to_vec()),
            Refused("AR", None),
        ),
        case(
            "5,001 messages in one frame are refused",
            Send::Frame(
                "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|X|P|2.5.1\r"
                    .repeat(5001)
                    .into_bytes(),
            ),
            Refused("AR", None),
        ),
    ]
}

fn cases() -> Vec<Case> {
    let mut all = framing();
    all.extend(headers());
    all.extend(content());
    all.extend(batches());
    all
}

pub fn case_count() -> usize {
    cases().len()
}

/// `$N` replaced by the case number, byte-wise (payloads need not be UTF-8).
fn numbered(bytes: &[u8], n: usize) -> Vec<u8> {
    let number = n.to_string();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"$N") {
            out.extend_from_slice(number.as_bytes());
            i += 2;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.mllp).await.expect("MLLP connects")
}

async fn send_bytes(stream: &mut TcpStream, bytes: &[u8], n: usize) -> Result<(), String> {
    let bytes = numbered(bytes, n);
    stream.write_all(&bytes).await.map_err(|e| e.to_string())
}

/// Sends a case and returns what came back: the answer frame's text, or `None` when the
/// connection closed without one (or the client went away).
async fn exchange(app: &TestApp, case: &Case, n: usize) -> Result<Option<String>, String> {
    let mut stream = connect(app).await;
    let bytes = match &case.send {
        Send::Frame(payload) => framed(payload),
        Send::Raw(bytes) => bytes.clone(),
        Send::Trickle(payload) => {
            for byte in framed(&numbered(payload, n)) {
                stream.write_all(&[byte]).await.map_err(|e| e.to_string())?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Vec::new()
        }
        Send::Reset(bytes) => {
            send_bytes(&mut stream, bytes, n).await?;
            stream.set_zero_linger().ok();
            return Ok(None);
        }
        Send::Abandon(count, bytes) => {
            drop(stream);
            for _ in 0..*count {
                let mut extra = connect(app).await;
                let _ = send_bytes(&mut extra, bytes, n).await;
            }
            return Ok(None);
        }
        Send::BesideIdle(count, payload) => {
            let mut idle = Vec::new();
            for _ in 0..*count {
                idle.push(connect(app).await);
            }
            return answer(stream, numbered(&framed(payload), n), case.expect).await;
        }
        Send::BesideStalled(payload) => {
            let mut stalled = connect(app).await;
            send_bytes(&mut stalled, b"\x0bMSH|^~\\&|SLOW", n).await?;
            return answer(stream, numbered(&framed(payload), n), case.expect).await;
        }
    };
    answer(stream, numbered(&bytes, n), case.expect).await
}

/// Writes `bytes` while reading the answer, so that a server that answers before reading
/// everything (an oversized frame) cannot leave the writer stuck. The answer frame's text, or
/// `None` when the connection closes without one. Where no answer is expected, our side is
/// closed after writing: a server waiting for the rest of a frame then sees the stream end
/// mid-frame, which it must answer by closing.
async fn answer(
    stream: TcpStream,
    bytes: Vec<u8>,
    expect: Expect,
) -> Result<Option<String>, String> {
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&bytes).await;
        if matches!(expect, Closed) {
            let _ = writer.shutdown().await;
        }
        writer
    });
    let (received, closed) = read_frame_or_close(&mut reader).await;
    writing.abort();
    match (received.iter().position(|&b| b == 0x1c), closed) {
        (Some(end), _) => {
            let text = &received[1.min(end)..end];
            Ok(Some(String::from_utf8_lossy(text).into_owned()))
        }
        (None, true) if received.is_empty() => Ok(None),
        (None, true) => Err(format!(
            "a partial answer: {:?}",
            String::from_utf8_lossy(&received)
        )),
        (None, false) => Err("neither an answer nor a close within 30 s".into()),
    }
}

/// Reads until a whole frame has arrived or the peer closes (30 s at most); what arrived, and
/// whether the peer closed.
async fn read_frame_or_close(stream: &mut (impl AsyncRead + Unpin)) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return (received, false),
            Ok(Ok(0) | Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
        }
        if received.windows(2).any(|w| w == [0x1c, 0x0d]) {
            return (received, false);
        }
    }
}

fn judge(expect: Expect, answer: Option<&str>) -> Result<(), String> {
    match (expect, answer) {
        (Gone, _) => Ok(()),
        (Closed, None) => Ok(()),
        (Closed, Some(ack)) => Err(format!(
            "an answer where the connection should close: {ack:?}"
        )),
        (_, None) => Err("the connection closed without an ACK".into()),
        (Accepted, Some(ack)) => match field(ack, "MSA", 1).as_str() {
            "AA" => Ok(()),
            other => Err(format!("MSA-1 {other}, not AA: {}", shown(ack))),
        },
        (Refused(code, location), Some(ack)) => {
            let got = field(ack, "MSA", 1);
            if got != code {
                return Err(format!("MSA-1 {got}, not {code}: {}", shown(ack)));
            }
            if !ack.split('\r').any(|s| s.starts_with("ERR")) {
                return Err(format!("no ERR segment: {}", shown(ack)));
            }
            match location {
                Some(wanted) if field(ack, "ERR", 2) != wanted => Err(format!(
                    "ERR-2 {:?}, not {wanted}: {}",
                    field(ack, "ERR", 2),
                    shown(ack)
                )),
                _ => Ok(()),
            }
        }
    }
}

fn shown(ack: &str) -> String {
    ack.chars().take(400).collect()
}

/// Cases between health checks: a valid result must be accepted after each group.
const GROUP: usize = 10;

pub async fn run(app: &TestApp) -> Vec<Mismatch> {
    let mut mismatches = Vec::new();
    for (n, case) in cases().into_iter().enumerate() {
        let verdict = match exchange(app, &case, n).await {
            Ok(answer) => judge(case.expect, answer.as_deref()),
            Err(problem) => Err(problem),
        };
        if let Err(problem) = verdict {
            mismatches.push(Mismatch {
                door: "MLLP",
                case: case.name.to_string(),
                problem,
            });
        }
        if n % GROUP == GROUP - 1 {
            valid_oru_still_accepted(app, &format!("AFTER{n}")).await;
        }
    }
    mismatches
}

/// A valid ORU^R01 on a new connection is answered AA.
pub async fn valid_oru_still_accepted(app: &TestApp, control_id: &str) {
    let text = String::from_utf8(numbered(&oru(), 0))
        .unwrap()
        .replace("BI0", control_id)
        .replace("BIM0", &format!("OK{control_id}"))
        .replace("BIF0", &format!("OKF{control_id}"));
    let mut stream = connect(app).await;
    stream.write_all(&framed(text.as_bytes())).await.unwrap();
    let ack = read_frame(&mut stream).await;
    assert_eq!(
        field(&ack, "MSA", 1),
        "AA",
        "a valid ORU after the cases: {ack:?}"
    );
}
