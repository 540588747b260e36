//! One MLLP connection: read, decode, hand each frame to the handler, write its answer, repeat.
//!
//! The connection never reads ahead of an unanswered frame's response, so answers go out in
//! frame order. It closes on peer EOF, on an oversized frame (after answering it), on the idle
//! and frame timeouts, on a failed or slow write, and at shutdown once no frame is half-received.
//!
//! Closes the server starts while the peer may still be sending are "lingering": the write side
//! is shut, then input is read and dropped for a moment. Dropping a socket with unread input
//! makes the kernel reset the connection, which can destroy the answer just written.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, warn};

use crate::buffers::{Charge, FrameBuffers};
use crate::codec::{encode, FrameDecoder, FrameError};
use crate::config::MllpConfig;
use crate::server::{FrameMeta, MessageHandler};
use crate::slots::Registration;

const READ_CHUNK_BYTES: usize = 16 * 1024;
/// How long a lingering close waits for the peer to stop sending.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    PeerClosed,
    PeerClosedMidFrame {
        buffered_bytes: usize,
    },
    Idle,
    FrameStalled,
    Oversized,
    Shutdown,
    /// Closed, idle or mid-frame, to give its slot to a newcomer (see [`crate::slots`]).
    Evicted,
    ReadFailed(io::Error),
    WriteFailed(io::Error),
    WriteTimedOut,
}

/// What waiting for input produced.
enum Input {
    Bytes(usize),
    Eof,
    DeadlinePassed,
    StopRequested,
    Evicted,
    Failed(io::Error),
}

pub(crate) struct Connection<H, S> {
    stream: S,
    decoder: FrameDecoder,
    meta: FrameMeta,
    handler: Arc<H>,
    stop: watch::Receiver<bool>,
    read_buf: Vec<u8>,
    idle_timeout: Duration,
    frame_timeout: Duration,
    write_timeout: Duration,
    frames_answered: u64,
    /// Its place among the server's open connections, when the server keeps count.
    registration: Option<Registration>,
    /// Its share of the memory all connections may hold in frames, when the server bounds it.
    buffers: Option<Charge>,
}

impl<H, S> Connection<H, S>
where
    H: MessageHandler,
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(
        stream: S,
        meta: FrameMeta,
        handler: Arc<H>,
        config: &MllpConfig,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(config.max_frame_bytes),
            meta,
            handler,
            stop,
            read_buf: vec![0; READ_CHUNK_BYTES],
            idle_timeout: config.idle_timeout(),
            frame_timeout: config.frame_timeout(),
            write_timeout: config.write_timeout(),
            frames_answered: 0,
            registration: None,
            buffers: None,
        }
    }

    /// Charges what the connection holds in frames to the server's budget.
    pub(crate) fn with_buffers(mut self, buffers: &FrameBuffers) -> Self {
        self.buffers = Some(buffers.charge());
        self
    }

    /// Reports idleness to the server's slot registry, and closes when chosen to make way.
    pub(crate) fn with_registration(mut self, registration: Registration) -> Self {
        self.registration = Some(registration);
        self
    }

    pub(crate) async fn serve(mut self) {
        debug!("MLLP connection opened");
        let reason = self.serve_frames().await;
        self.close(reason).await;
    }

    async fn serve_frames(&mut self) -> Close {
        let mut idle_since = Instant::now();
        let mut frame_started: Option<Instant> = None;
        loop {
            // Answer everything already complete, then note whether a frame is half-received.
            match self.answer_complete_frames().await {
                Ok(0) => {}
                Ok(_) => {
                    idle_since = Instant::now();
                    frame_started = None;
                }
                Err(close) => return close,
            }
            // The frames answered are no longer held.
            if let Some(charge) = &mut self.buffers {
                charge.shrink_to(self.decoder.buffered_bytes());
            }
            if self.decoder.is_mid_frame() {
                frame_started.get_or_insert_with(Instant::now);
            } else {
                frame_started = None;
            }

            let stopping = *self.stop.borrow();
            if stopping && frame_started.is_none() {
                return Close::Shutdown;
            }
            let deadline = match frame_started {
                Some(started) => started + self.frame_timeout,
                None => idle_since + self.idle_timeout,
            };
            if let Some(r) = &self.registration {
                match frame_started {
                    None => r.activity.idle_since(r.registry_start(), idle_since),
                    Some(started) => r.activity.receiving_since(r.registry_start(), started),
                }
            }
            match self.read_input(deadline, stopping).await {
                Input::Bytes(n) => {
                    if let Some(r) = &self.registration {
                        r.activity.busy();
                    }
                    // Held until the budget has room; the frame's deadline still runs.
                    if let Some(charge) = &mut self.buffers {
                        let holding = self.decoder.buffered_bytes() + n;
                        let deadline =
                            frame_started.unwrap_or_else(Instant::now) + self.frame_timeout;
                        if timeout_at(deadline, charge.grow_to(holding)).await.is_err() {
                            return Close::FrameStalled;
                        }
                    }
                    self.decoder.push(&self.read_buf[..n])
                }
                Input::StopRequested => {}
                Input::Evicted => return Close::Evicted,
                Input::Eof => return self.peer_closed(),
                Input::DeadlinePassed if frame_started.is_some() => return Close::FrameStalled,
                Input::DeadlinePassed => return Close::Idle,
                Input::Failed(e) => return Close::ReadFailed(e),
            }
        }
    }

    /// Answers every buffered complete frame in order; returns how many, or why to close.
    async fn answer_complete_frames(&mut self) -> Result<u64, Close> {
        let mut answered = 0;
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => self.answer(frame).await?,
                Ok(None) => return Ok(answered),
                Err(FrameError::Oversized { prefix, limit }) => {
                    return Err(self.answer_oversized(prefix, limit).await)
                }
            }
            answered += 1;
        }
    }

    async fn answer(&mut self, frame: Bytes) -> Result<(), Close> {
        debug!(frame_bytes = frame.len(), "MLLP frame received");
        let responses = self.handler.handle(frame, self.meta.clone()).await;
        // No response means the handler must not answer (an inbound ACK, say): the frame still
        // counts as answered, so the idle timer restarts and the next frame is read.
        self.write_frames(&responses).await?;
        self.frames_answered += 1;
        if let Some(r) = &self.registration {
            r.answered(&responses);
        }
        Ok(())
    }

    async fn answer_oversized(&mut self, prefix: Bytes, limit: usize) -> Close {
        warn!(
            limit,
            "MLLP frame exceeds max_frame_bytes; answering and closing"
        );
        let responses = self.handler.oversized(prefix, self.meta.clone()).await;
        match self.write_frames(&responses).await {
            Ok(()) => Close::Oversized,
            Err(close) => close,
        }
    }

    /// Writes each response as its own frame, in order; each write has its own timeout.
    async fn write_frames(&mut self, responses: &[Vec<u8>]) -> Result<(), Close> {
        for response in responses {
            self.write_frame(response).await?;
        }
        Ok(())
    }

    async fn write_frame(&mut self, payload: &[u8]) -> Result<(), Close> {
        let framed = encode(payload);
        match timeout(self.write_timeout, self.stream.write_all(&framed)).await {
            Ok(Ok(())) => {
                debug!(response_bytes = payload.len(), "MLLP response written");
                Ok(())
            }
            Ok(Err(e)) => Err(Close::WriteFailed(e)),
            Err(_) => Err(Close::WriteTimedOut),
        }
    }

    /// Waits for input until `deadline`, or until a stop is requested (unless already
    /// `stopping`), or until the server asks this connection to make way (which it does only
    /// while it waits here, idle or mid-frame).
    async fn read_input(&mut self, deadline: Instant, stopping: bool) -> Input {
        let read = timeout_at(deadline, self.stream.read(&mut self.read_buf));
        let evicted = async {
            match &self.registration {
                Some(r) => r.activity.evicted().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            read = read => match read {
                Ok(Ok(0)) => Input::Eof,
                Ok(Ok(n)) => Input::Bytes(n),
                Ok(Err(e)) => Input::Failed(e),
                Err(_) => Input::DeadlinePassed,
            },
            () = stop_requested(&mut self.stop), if !stopping => Input::StopRequested,
            () = evicted => Input::Evicted,
        }
    }

    fn peer_closed(&self) -> Close {
        match self.decoder.finish() {
            Ok(()) => Close::PeerClosed,
            Err(truncated) => Close::PeerClosedMidFrame {
                buffered_bytes: truncated.buffered_bytes,
            },
        }
    }

    async fn close(mut self, reason: Close) {
        log_close(&reason);
        if matches!(reason, Close::Oversized | Close::Shutdown | Close::Evicted) {
            self.linger().await;
        }
        debug!(
            frames_answered = self.frames_answered,
            junk_bytes = self.decoder.junk_bytes(),
            "MLLP connection closed"
        );
    }

    /// Sends FIN after the last answer, then drops input until the peer closes or time runs out.
    async fn linger(&mut self) {
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let deadline = Instant::now() + CLOSE_LINGER;
        while let Ok(Ok(n)) = timeout_at(deadline, self.stream.read(&mut self.read_buf)).await {
            if n == 0 {
                return;
            }
        }
    }
}

/// Completes once the server asks connections to stop. A dropped sender means the server is gone,
/// which is a stop too.
pub(crate) async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stopping| stopping).await;
}

/// The second (since the epoch) of the last mid-frame warning.
static MID_FRAME_WARNED: AtomicU64 = AtomicU64::new(0);

/// Whether a warning stamped in `last` may be logged now (and stamps it).
fn once_a_second(last: &AtomicU64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    last.swap(now, Ordering::Relaxed) != now
}

fn log_close(reason: &Close) {
    match reason {
        Close::PeerClosed => debug!("MLLP peer closed the connection"),
        // Once a second at most: a peer doing it in a loop must not flood the log.
        Close::PeerClosedMidFrame { buffered_bytes } if once_a_second(&MID_FRAME_WARNED) => warn!(
            buffered_bytes,
            "MLLP peer closed the connection mid-frame; the partial frame is dropped"
        ),
        Close::PeerClosedMidFrame { buffered_bytes } => debug!(
            buffered_bytes,
            "MLLP peer closed the connection mid-frame; the partial frame is dropped"
        ),
        Close::Idle => debug!("MLLP connection idle past idle_timeout_ms; closing"),
        Close::FrameStalled => debug!("MLLP frame not finished within frame_timeout_ms; closing"),
        Close::Oversized => debug!("MLLP connection closing after an oversized frame"),
        Close::Shutdown => debug!("MLLP connection closing for shutdown"),
        Close::Evicted => debug!("MLLP connection made way for a newcomer at the cap; closing"),
        Close::ReadFailed(e) => debug!(error = %e, "MLLP read failed; closing"),
        Close::WriteFailed(e) => warn!(error = %e, "MLLP response could not be written; closing"),
        Close::WriteTimedOut => {
            warn!("MLLP peer did not take the response within write_timeout_ms; closing")
        }
    }
}
