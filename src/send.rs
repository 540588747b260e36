//! `hl7bridge send`: a minimal MLLP client, so that a user can feed a file to a running server
//! without netcat or a script. Each file is sent as one frame; the answer is printed with its
//! segments on separate lines.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends every file and prints each answer. Returns whether every answer was AA (or CA).
pub fn send_files(addr: SocketAddr, files: &[String]) -> anyhow::Result<bool> {
    let mut payloads = Vec::with_capacity(files.len());
    for file in files {
        let payload = std::fs::read(Path::new(file)).with_context(|| format!("reading {file}"))?;
        payloads.push((file.clone(), payload));
    }
    send_payloads(addr, &payloads)
}

/// Sends each (name, payload) as one frame on one connection and prints each answer under its
/// name. Returns whether every answer was AA (or CA).
pub fn send_payloads(addr: SocketAddr, payloads: &[(String, Vec<u8>)]) -> anyhow::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connecting to MLLP on {addr}"))?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut all_accepted = true;
    for (name, payload) in payloads {
        stream.write_all(&hl7bridge_mllp::encode(payload))?;
        let answer =
            read_answer(&mut stream).with_context(|| format!("waiting for the ACK to {name}"))?;
        println!("{name}:\n{}", summary(&answer));
        all_accepted &= accepted(&answer);
    }
    Ok(all_accepted)
}

fn read_answer(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while !buf.ends_with(&[0x1c, 0x0d]) {
        let n = stream.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "the server closed the connection without answering");
        buf.extend_from_slice(&chunk[..n]);
    }
    let start = buf.iter().position(|&b| b == 0x0b).map_or(0, |i| i + 1);
    Ok(String::from_utf8_lossy(&buf[start..buf.len() - 2]).into_owned())
}

/// The answer's MSA segments (ACK code and control id) and, for each ERR, its location and
/// table 0357 code. The rest of an ACK (the header, ERR's diagnostic text) is left out of the
/// terminal: what was said about a message stays in the server's message store.
fn summary(answer: &str) -> String {
    let separator = answer.chars().nth(3).unwrap_or('|');
    answer
        .split('\r')
        .filter_map(|segment| {
            if segment.starts_with("MSA") {
                Some(segment.to_string())
            } else if segment.starts_with("ERR") {
                let fields: Vec<&str> = segment.split(separator).take(5).collect();
                Some(fields.join(&separator.to_string()))
            } else {
                None
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether every MSA in the answer says AA or CA.
fn accepted(answer: &str) -> bool {
    let separator = answer.chars().nth(3).unwrap_or('|');
    let codes: Vec<&str> = answer
        .split('\r')
        .filter(|s| s.starts_with("MSA"))
        .map(|s| s.split(separator).nth(1).unwrap_or(""))
        .collect();
    !codes.is_empty() && codes.iter().all(|c| *c == "AA" || *c == "CA")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_summary_holds_codes_and_locations_only() {
        let ack = "MSH|^~\\&|HL7BRIDGE|H|LAB|F|2024||ACK^R01^ACK|X|P|2.5.1\r\
                   MSA|AE|C1\rERR||PID^1^7|102^Data type error^HL70357|E||||some text\r";
        assert_eq!(
            summary(ack),
            "MSA|AE|C1\nERR||PID^1^7|102^Data type error^HL70357|E"
        );
    }

    #[test]
    fn only_answers_whose_every_msa_accepts_count_as_accepted() {
        assert!(accepted("MSH|^~\\&|a\rMSA|AA|1\r"));
        assert!(!accepted("MSH|^~\\&|a\rMSA|AA|1\rMSH|^~\\&|a\rMSA|AE|2\r"));
        assert!(!accepted("garbage"));
        assert!(accepted("MSH:-+?*:a\rMSA:AA:1\r"));
    }
}
