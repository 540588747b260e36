//! An MLLP sender that waits for each ACK before the next message (stop-and-wait), as lab
//! systems do: one connection per worker, reopened after a failure.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::dataset::hl7::Oru;
use crate::load::Worker;

const START: u8 = 0x0b;
const END: [u8; 2] = [0x1c, 0x0d];
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Sender {
    pub addr: SocketAddr,
    pub seed: u64,
    pub patients: u64,
    /// Kept apart in control ids: `R` routine, `S` STAT.
    pub lane: char,
    pub stat: bool,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl Sender {
    pub fn new(addr: SocketAddr, seed: u64, patients: u64, lane: char, stat: bool) -> Sender {
        Sender {
            addr,
            seed,
            patients,
            lane,
            stat,
            stream: None,
            buffer: Vec::with_capacity(4096),
        }
    }

    /// Sends one frame and reads one frame back. The connection is put back only after a
    /// whole answer, so a failure or a timeout (which drops this future) closes it.
    async fn exchange(&mut self, frame: &[u8]) -> std::io::Result<String> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => connect(self.addr).await?,
        };
        stream.write_all(frame).await?;
        self.buffer.clear();
        while !self.buffer.ends_with(&END) {
            let mut chunk = [0u8; 2048];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
        self.stream = Some(stream);
        Ok(String::from_utf8_lossy(&self.buffer).into_owned())
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Worker for Sender {
    async fn call(&mut self, seq: u64) -> Result<u64, String> {
        let message = Oru::generate(self.seed, self.patients, self.lane, seq).er7(self.stat);
        let mut frame = Vec::with_capacity(message.len() + 3);
        frame.push(START);
        frame.extend_from_slice(&message);
        frame.extend_from_slice(&END);
        let answer = tokio::time::timeout(ACK_TIMEOUT, self.exchange(&frame)).await;
        let ack = match answer {
            Ok(Ok(ack)) => ack,
            Ok(Err(err)) => return Err(format!("MLLP: {err}")),
            Err(_) => return Err("no ACK within 30 s".into()),
        };
        match ack_code(&ack) {
            Some("AA") => Ok(1),
            other => Err(format!("ACK {}", other.unwrap_or("unreadable"))),
        }
    }
}

/// MSA-1 of an ACK.
fn ack_code(ack: &str) -> Option<&str> {
    let msa = ack.split('\r').find(|s| s.starts_with("MSA|"))?;
    msa.split('|').nth(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_code_is_msa_1() {
        let ack = "\u{b}MSH|^~\\&|A|B|C|D|20240101||ACK|1|P|2.5.1\rMSA|AE|R1\r\u{1c}\r";
        assert_eq!(ack_code(ack), Some("AE"));
        assert_eq!(ack_code("MSH|x\r"), None);
    }
}
