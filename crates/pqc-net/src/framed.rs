//! Length-prefixed frames over quinn streams.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use pqc_wire::WireError;

use crate::error::NetError;

/// Reads a stream's frames (`u32 BE length || body`), as [`read_frame`]
/// does, but:
/// - taking whatever quinn has received in one call (`read_chunks`, up to
///   [`FrameReader::BATCH`] pieces) instead of one piece per call: a file
///   chunk of 512 KiB arrives in some 370 packets, and under load one packet
///   holds several small frames; what belongs to the next frame waits here;
/// - cancel-safe: what arrived of a frame stays here when [`FrameReader::next`]
///   is dropped before it finished, so it can be polled in a `select!` beside
///   other work;
/// - optionally timed: with a timeout, a frame's body must arrive within it
///   of its length prefix (`Err(NetError::Timeout)` otherwise);
/// - memory grows with the bytes actually received rather than being
///   reserved up front for the announced length.
///
/// The framing itself is I/O-free ([`FrameReader::push`],
/// [`FrameReader::poll_frame`], [`FrameReader::finish`]): the fuzz target
/// `net_frame_reader` drives it with bytes cut in arbitrary pieces.
#[derive(Debug)]
pub struct FrameReader {
    max: usize,
    timeout: Option<Duration>,
    /// Received from quinn and not yet taken into a frame (at most one
    /// `read_chunks`' worth: each pins a packet buffer).
    buffered: VecDeque<Bytes>,
    prefix: [u8; 4],
    /// Bytes of the prefix received.
    prefix_got: usize,
    /// Pieces of the body as they arrived (at most [`FrameReader::MAX_PIECES`]),
    /// copied into `body` in batches.
    pieces: Vec<Bytes>,
    body: Vec<u8>,
    /// Bytes of the body received (in `pieces` and `body`).
    got: usize,
    /// When the current frame's body must be complete (set by its prefix).
    deadline: Option<tokio::time::Instant>,
}

impl FrameReader {
    /// Pieces asked of quinn at once.
    pub const BATCH: usize = 32;
    const MAX_PIECES: usize = 64;

    /// A reader of frames up to `max` bytes; `timeout`: how long a frame's
    /// body may take after its length prefix.
    pub fn new(max: usize, timeout: Option<Duration>) -> Self {
        Self {
            max,
            timeout,
            buffered: VecDeque::new(),
            prefix: [0; 4],
            prefix_got: 0,
            pieces: Vec::new(),
            body: Vec::new(),
            got: 0,
            deadline: None,
        }
    }

    /// Adds bytes received on the stream (in order) to what is buffered.
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.buffered.push_back(bytes);
        }
    }

    /// Up to `max` bytes of what is buffered, in stream order.
    fn take(&mut self, max: usize) -> Option<Bytes> {
        let front = self.buffered.front_mut()?;
        if front.len() > max {
            return Some(front.split_to(max));
        }
        self.buffered.pop_front()
    }

    /// The next whole frame from what was pushed, `Ok(None)` while more is
    /// needed. The I/O-free part of [`FrameReader::next`]: what it took of
    /// an unfinished frame stays in `self`.
    pub fn poll_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        while self.prefix_got < 4 {
            let Some(c) = self.take(4 - self.prefix_got) else { return Ok(None) };
            let n = c.len();
            self.prefix[self.prefix_got..self.prefix_got + n].copy_from_slice(&c);
            self.prefix_got += n;
            if self.deadline.is_none() {
                // A prefix begun must also arrive within the frame timeout.
                self.deadline = self.timeout.map(|t| tokio::time::Instant::now() + t);
            }
        }
        let len = u32::from_be_bytes(self.prefix) as usize;
        if len > self.max {
            return Err(WireError::TooLarge { len, max: self.max });
        }
        while self.got < len {
            let Some(c) = self.take(len - self.got) else { return Ok(None) };
            self.got += c.len();
            self.pieces.push(c);
            if self.pieces.len() == Self::MAX_PIECES || self.got >= len {
                // The body is allocated for the announced length once 64 KiB
                // of it have arrived, so every byte is copied once, without
                // reallocations.
                let room = if self.got >= 64 * 1024 || self.got >= len { len } else { self.got.saturating_mul(2) };
                self.body.reserve_exact(room.saturating_sub(self.body.len()));
                for piece in self.pieces.drain(..) {
                    self.body.extend_from_slice(&piece);
                }
            }
        }
        let body = std::mem::take(&mut self.body);
        self.prefix_got = 0;
        self.got = 0;
        self.deadline = None;
        Ok(Some(body))
    }

    /// The stream ended: `Ok(())` between frames, the bytes missing of the
    /// frame begun otherwise.
    pub fn finish(&self) -> Result<(), WireError> {
        let buffered: usize = self.buffered.iter().map(Bytes::len).sum();
        match (self.prefix_got, buffered) {
            (0, 0) => Ok(()),
            (p, b) if p < 4 => Err(WireError::Truncated { needed: 4usize.saturating_sub(p + b) }),
            _ => {
                let len = u32::from_be_bytes(self.prefix) as usize;
                Err(WireError::Truncated { needed: len.saturating_sub(self.got + buffered) })
            }
        }
    }

    /// Waits for more of the stream (`false`: the peer finished it). Cancel-safe.
    async fn fill(&mut self, recv: &mut quinn::RecvStream) -> Result<bool, NetError> {
        let mut bufs: [Bytes; Self::BATCH] = Default::default();
        let read = recv.read_chunks(&mut bufs);
        let n = match self.deadline {
            Some(d) => tokio::time::timeout_at(d, read).await.map_err(|_| NetError::Timeout)?,
            None => read.await,
        }?;
        let Some(n) = n else { return Ok(false) };
        for b in bufs.into_iter().take(n) {
            self.push(b);
        }
        Ok(true)
    }

    /// The next frame's body, `Ok(None)` once the peer finished the stream
    /// between frames. Cancel-safe: each await is a cancel-safe
    /// `read_chunks`, and what it returned is kept in `self` before the next.
    pub async fn next(&mut self, recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, NetError> {
        loop {
            if let Some(frame) = self.poll_frame()? {
                return Ok(Some(frame));
            }
            if !self.fill(recv).await? {
                self.finish()?;
                return Ok(None);
            }
        }
    }
}

/// Feeds `data` to a [`FrameReader`] (frames of at most 4 KiB) in pieces
/// whose sizes the data's first bytes choose, and checks that it reads the
/// same frames, and fails or ends the same way, as a plain parse of the
/// whole input. The fuzz target's entry point: how many frames were read,
/// or how the two differ.
#[doc(hidden)]
pub fn fuzz_frame_reader(data: &[u8]) -> Result<usize, String> {
    const MAX: usize = 4096;
    let (cuts, stream) = data.split_at(data.len().min(8));
    // The plain parse.
    let mut expected = Vec::new();
    let mut at = 0;
    let expected_end = loop {
        let Some(prefix) = stream.get(at..at + 4) else {
            break if at == stream.len() {
                Ok(())
            } else {
                Err(WireError::Truncated { needed: at + 4 - stream.len() })
            };
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > MAX {
            break Err(WireError::TooLarge { len, max: MAX });
        }
        let Some(body) = stream.get(at + 4..at + 4 + len) else {
            break Err(WireError::Truncated { needed: at + 4 + len - stream.len() });
        };
        expected.push(body.to_vec());
        at += 4 + len;
    };
    // The reader, fed in pieces.
    let mut reader = FrameReader::new(MAX, None);
    let mut got = Vec::new();
    let mut rest = Bytes::copy_from_slice(stream);
    let mut i = 0;
    let end = loop {
        match reader.poll_frame() {
            Ok(Some(f)) => {
                got.push(f);
                continue;
            }
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        if rest.is_empty() {
            break reader.finish();
        }
        let size = usize::from(cuts.get(i % cuts.len().max(1)).copied().unwrap_or(255)).max(1) * (i % 3 + 1);
        i += 1;
        reader.push(rest.split_to(size.min(rest.len())));
    };
    if got != expected {
        return Err(format!("frames differ from a plain parse: {} against {}", got.len(), expected.len()));
    }
    if end != expected_end {
        return Err(format!("the end differs from a plain parse: {end:?} against {expected_end:?}"));
    }
    Ok(got.len())
}

/// Reads one frame body. `Ok(None)` on a clean end of stream between frames;
/// `Err(Wire(TooLarge))` as soon as the prefix announces more than `max`
/// bytes (nothing is allocated for it).
pub async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Option<Vec<u8>>, NetError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(WireError::Truncated { needed: 4 }.into()),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max }.into());
    }
    // Filled from quinn's buffers as they come: copied once, never zeroed first.
    let mut body = Vec::with_capacity(len);
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(WireError::Truncated { needed: len - body.len() }.into()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(body))
}

/// Writes one whole frame (length prefix and body, as the `encode` methods
/// of the frame types make it): handed to quinn without a copy.
pub async fn write_encoded(send: &mut quinn::SendStream, frame: Vec<u8>) -> Result<(), NetError> {
    send.write_chunk(bytes::Bytes::from(frame)).await?;
    Ok(())
}

/// Writes one frame: `u32 BE length || body`.
pub async fn write_frame(send: &mut quinn::SendStream, body: &[u8]) -> Result<(), NetError> {
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLarge { len: body.len(), max: u32::MAX as usize })?;
    send.write_all(&len.to_be_bytes()).await?;
    send.write_all(body).await?;
    Ok(())
}
