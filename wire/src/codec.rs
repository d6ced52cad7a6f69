//! The one place that knows how messages become bytes: bincode 2 (through its serde path, with
//! `config::standard()`) for values, and a `u32` little-endian length prefix for frames. Every
//! other module calls [`encode`], [`decode`], [`write_frame`] and [`read_frame`], so the encoding
//! can be swapped (postcard is bincode's maintained twin) by editing this file alone.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default bound on one frame's payload: 16 MiB. The largest message today is a
/// `ScoreProducts` reply for the contract's 10,000 products (about 120 KiB); the bound is far above
/// it, yet low enough that a peer cannot make a process buffer gigabytes with one length prefix.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 16 * 1024 * 1024;

/// Size of the length prefix in front of every frame.
pub const FRAME_PREFIX_BYTES: usize = 4;

/// Largest first allocation made for an incoming payload, before any of its bytes has arrived.
/// The buffer grows only as bytes come in, so a prefix that lies about the length (within the
/// bound) costs the reader what the peer actually sent, not what it announced.
const PAYLOAD_PREALLOCATION_BYTES_MAX: usize = 64 * 1024;

const _: () = assert!(FRAME_BYTES_MAX_DEFAULT as usize >= PAYLOAD_PREALLOCATION_BYTES_MAX);

/// Why a value or a frame could not be encoded or decoded. A bad frame ends the stream it came
/// on; it never takes a process down.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The length prefix announces more than the reader accepts (refused before allocating), or
    /// a value to send encodes to more than the bound.
    #[error("frame of {frame_bytes} bytes exceeds the bound of {frame_bytes_max} bytes")]
    FrameTooLarge {
        frame_bytes: u64,
        frame_bytes_max: u32,
    },
    /// The stream ended inside a frame.
    #[error(
        "truncated frame: the stream ended after {bytes_received} of {bytes_expected} bytes of its {part}"
    )]
    Truncated {
        part: FramePart,
        bytes_expected: u64,
        bytes_received: u64,
    },
    #[error("could not encode a value: {0}")]
    Encode(String),
    #[error("could not decode a value: {0}")]
    Decode(String),
    /// A payload held a whole value and then more bytes: the two sides disagree on the layout.
    #[error("{bytes_trailing} bytes left over after decoding a value")]
    TrailingBytes { bytes_trailing: usize },
    #[error("frame i/o failed: {0}")]
    Io(#[source] std::io::Error),
}

/// The two parts of a frame, to say where a stream was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramePart {
    LengthPrefix,
    Payload,
}

impl fmt::Display for FramePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FramePart::LengthPrefix => "length prefix",
            FramePart::Payload => "payload",
        })
    }
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes one value.
///
/// # Errors
/// [`CodecError::Encode`] when serde refuses the value (for example a map with non-string keys
/// in a format that needs them; none of our messages can fail).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, bincode_config())
        .map_err(|error| CodecError::Encode(error.to_string()))
}

/// Decodes one value that fills `bytes` exactly.
///
/// # Errors
/// [`CodecError::Decode`] for bytes that are not a value of `T`, [`CodecError::TrailingBytes`]
/// when a value ends before the bytes do.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, bytes_read) = bincode::serde::decode_from_slice(bytes, bincode_config())
        .map_err(|error| CodecError::Decode(error.to_string()))?;
    if bytes_read != bytes.len() {
        return Err(CodecError::TrailingBytes {
            bytes_trailing: bytes.len() - bytes_read,
        });
    }
    Ok(value)
}

/// Encodes one value as a whole frame (length prefix and payload) in one buffer, ready for a
/// single write: the transport's path, which saves the copy [`write_frame`] would make.
///
/// # Errors
/// [`CodecError::Encode`] as [`encode`]; [`CodecError::FrameTooLarge`] when the payload exceeds
/// `frame_bytes_max` (the peer would refuse it).
pub fn encode_frame<T: Serialize>(value: &T, frame_bytes_max: u32) -> Result<Vec<u8>, CodecError> {
    let mut frame = vec![0u8; FRAME_PREFIX_BYTES];
    bincode::serde::encode_into_std_write(value, &mut frame, bincode_config())
        .map_err(|error| CodecError::Encode(error.to_string()))?;
    let payload_bytes = frame.len() - FRAME_PREFIX_BYTES;
    let prefix = checked_prefix(payload_bytes, frame_bytes_max)?;
    frame[..FRAME_PREFIX_BYTES].copy_from_slice(&prefix);
    Ok(frame)
}

fn checked_prefix(
    payload_bytes: usize,
    frame_bytes_max: u32,
) -> Result<[u8; FRAME_PREFIX_BYTES], CodecError> {
    match u32::try_from(payload_bytes) {
        Ok(length) if length <= frame_bytes_max => Ok(length.to_le_bytes()),
        _ => Err(CodecError::FrameTooLarge {
            frame_bytes: payload_bytes as u64,
            frame_bytes_max,
        }),
    }
}

/// Writes `payload` as one frame: its length as a `u32` little endian, then the bytes. Does not
/// flush or close the writer.
///
/// # Errors
/// [`CodecError::FrameTooLarge`] before writing anything when `payload` exceeds
/// `frame_bytes_max`; [`CodecError::Io`] when the writer fails.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    payload: &[u8],
    frame_bytes_max: u32,
) -> Result<(), CodecError> {
    let prefix = checked_prefix(payload.len(), frame_bytes_max)?;
    writer.write_all(&prefix).await.map_err(CodecError::Io)?;
    writer.write_all(payload).await.map_err(CodecError::Io)?;
    Ok(())
}

/// Reads one frame and returns its payload.
///
/// The length prefix is checked against `frame_bytes_max` before anything is allocated for the
/// payload, and the payload buffer then grows with the bytes that actually arrive (its first
/// allocation is at most 64 KiB), so a lying prefix costs only what the peer sent.
///
/// # Errors
/// [`CodecError::FrameTooLarge`] for a prefix above the bound (naming both numbers),
/// [`CodecError::Truncated`] when the stream ends inside the prefix or the payload (including
/// before the first byte), [`CodecError::Io`] when the reader fails.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    frame_bytes_max: u32,
) -> Result<Vec<u8>, CodecError> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    let mut prefix_received = 0;
    while prefix_received < FRAME_PREFIX_BYTES {
        let bytes = reader
            .read(&mut prefix[prefix_received..])
            .await
            .map_err(CodecError::Io)?;
        if bytes == 0 {
            return Err(CodecError::Truncated {
                part: FramePart::LengthPrefix,
                bytes_expected: FRAME_PREFIX_BYTES as u64,
                bytes_received: prefix_received as u64,
            });
        }
        prefix_received += bytes;
    }
    let length = u32::from_le_bytes(prefix);
    if length > frame_bytes_max {
        return Err(CodecError::FrameTooLarge {
            frame_bytes: u64::from(length),
            frame_bytes_max,
        });
    }
    let length = length as usize;
    let mut payload = Vec::with_capacity(length.min(PAYLOAD_PREALLOCATION_BYTES_MAX));
    let bytes_received = reader
        .take(length as u64)
        .read_to_end(&mut payload)
        .await
        .map_err(CodecError::Io)?;
    if bytes_received < length {
        return Err(CodecError::Truncated {
            part: FramePart::Payload,
            bytes_expected: length as u64,
            bytes_received: bytes_received as u64,
        });
    }
    debug_assert_eq!(payload.len(), length);
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves `encode_frame` and `read_frame` agree on the layout, and that a payload of exactly
    /// the bound passes while one byte more is refused on the writing side too.
    #[tokio::test]
    async fn encode_frame_matches_read_frame_and_the_bound_is_inclusive() {
        let value = vec![7u8; 10];
        let frame = encode_frame(&value, 64).expect("small frame");
        let mut reader = &frame[..];
        let payload = read_frame(&mut reader, 64).await.expect("frame reads back");
        assert_eq!(decode::<Vec<u8>>(&payload).expect("decodes"), value);

        let exact = encode(&value).expect("encodes");
        let bound = u32::try_from(exact.len()).expect("small");
        assert!(encode_frame(&value, bound).is_ok());
        assert!(matches!(
            encode_frame(&value, bound - 1),
            Err(CodecError::FrameTooLarge { frame_bytes, frame_bytes_max })
                if frame_bytes == u64::from(bound) && frame_bytes_max == bound - 1
        ));
    }

    /// Proves `decode` refuses bytes left over after a value instead of ignoring them.
    #[test]
    fn decode_refuses_trailing_bytes() {
        let mut bytes = encode(&5u32).expect("encodes");
        bytes.push(0);
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(CodecError::TrailingBytes { bytes_trailing: 1 })
        ));
    }
}
