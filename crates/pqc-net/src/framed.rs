//! Length-prefixed frames over quinn streams.

use pqc_wire::WireError;

use crate::error::NetError;

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
