//! The decoder contract of [`fd_protocol::codec`], checked by every fuzz target.
//!
//! Each check decodes its input and asserts what the result must be, so a violation is a crash
//! that libFuzzer records, like a panic inside a decoder:
//!
//! - [`decode_frame`] returns `Ok(None)` exactly when the buffer is shorter than the prefix plus
//!   the length it announces (and that length is within the maximum);
//! - a length above the maximum is refused with [`CodecError::FrameTooLarge`] from the prefix
//!   alone;
//! - a decoded frame reports [`LEN_PREFIX`] plus the announced length as consumed, and holds the
//!   message [`decode_payload`] finds in those bytes;
//! - whatever decodes re-encodes (no longer than the payload it came from) and decodes again to
//!   the same message;
//! - the soft labels of a decoded message answer [`SoftLabels::validate`] and
//!   [`SoftLabels::check_queries`] consistently with their shape;
//! - a stream read in chunks yields the same frames, and stops at the same point, as the whole
//!   stream decoded at once.
//!
//! Messages are compared by their encodings, not with `==`: a decoded NaN is not equal to
//! itself, and equal encodings mean bit-for-bit equal messages. The stable property test
//! `protocol/tests/decode_properties.rs` checks the same contract over generated inputs.

#![forbid(unsafe_code)]

use fd_protocol::codec::{
    CodecError, LEN_PREFIX, decode_frame, decode_payload, encode_frame, payload_len,
};
use fd_protocol::{DEFAULT_MAX_FRAME_LEN, LabelError, Message, PROTOCOL_VERSION, SoftLabels};

/// A small frame maximum: fits a `Hello` (at most 16 payload bytes) and short strings but not
/// most soft labels, so short inputs reach the too-large branch as well.
pub const SMALL_MAX: usize = 64;

/// Bytes of the protocol version at the start of a payload (a big-endian u16, codec.rs).
const VERSION_LEN: usize = 2;

fn encode(msg: &Message) -> Vec<u8> {
    encode_frame(msg, DEFAULT_MAX_FRAME_LEN).expect("a decoded message fits the default maximum")
}

/// Decodes `buf` as a frame with maximum `max` and checks the result against what the length
/// prefix announces and what [`check_payload`] finds in the announced bytes. Returns the
/// decoded message and the bytes it used, if any.
pub fn check_frame(buf: &[u8], max: usize) -> Option<(Message, usize)> {
    let result = decode_frame(buf, max);
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        assert!(
            matches!(result, Ok(None)),
            "no prefix yet must be incomplete: {result:?}"
        );
        return None;
    };
    let announced = u32::from_be_bytes(*prefix) as usize;
    match payload_len(*prefix, max) {
        Ok(len) => assert!(len == announced && len <= max),
        Err(e) => assert!(
            matches!(e, CodecError::FrameTooLarge { len, max: m } if len == announced && m == max)
                && announced > max,
            "payload_len({announced}, {max}): {e:?}"
        ),
    }
    if announced > max {
        assert!(
            matches!(result, Err(CodecError::FrameTooLarge { len, max: m }) if len == announced && m == max),
            "{announced} bytes announced, maximum {max}: {result:?}"
        );
        return None;
    }
    let Some(payload) = buf.get(LEN_PREFIX..LEN_PREFIX + announced) else {
        assert!(
            matches!(result, Ok(None)),
            "{} bytes hold less than the {announced} announced: {result:?}",
            buf.len() - LEN_PREFIX
        );
        return None;
    };
    match (result, check_payload(payload)) {
        (Ok(Some((msg, used))), Ok(alone)) => {
            assert_eq!(used, LEN_PREFIX + announced, "consumed length");
            assert_eq!(encode(&msg), encode(&alone), "frame and payload decode");
            Some((msg, used))
        }
        (Err(e), Err(alone)) => {
            assert_eq!(
                format!("{e:?}"),
                format!("{alone:?}"),
                "frame and payload errors"
            );
            None
        }
        (result, alone) => panic!("frame decodes to {result:?}, its payload to {alone:?}"),
    }
}

/// Decodes `payload` and checks the error against the version and length, or the message
/// against a round trip and its soft labels against [`check_labels`].
pub fn check_payload(payload: &[u8]) -> Result<Message, CodecError> {
    let result = decode_payload(payload);
    let Some(version) = payload
        .first_chunk::<VERSION_LEN>()
        .map(|v| u16::from_be_bytes(*v))
    else {
        assert!(
            matches!(result, Err(CodecError::TooShort { len }) if len == payload.len()),
            "{} bytes hold no version: {result:?}",
            payload.len()
        );
        return result;
    };
    if version != PROTOCOL_VERSION {
        assert!(
            matches!(result, Err(CodecError::UnsupportedVersion { got, supported })
                if got == version && supported == PROTOCOL_VERSION),
            "version {version}: {result:?}"
        );
        return result;
    }
    match &result {
        Ok(msg) => {
            check_round_trip(msg, payload.len());
            for labels in labels_of(msg) {
                check_labels(labels);
            }
            if let Message::RoundOpen(open) = msg {
                // Unrelated query ids: an answer either way, never a panic.
                let _ = open.target.check_queries(&open.query_ids);
            }
        }
        Err(CodecError::TrailingBytes { extra }) => {
            assert!(
                *extra >= 1 && *extra <= payload.len() - VERSION_LEN,
                "{extra} extra"
            );
            // Without the extra bytes the message is complete.
            let head = &payload[..payload.len() - extra];
            assert!(
                decode_payload(head).is_ok(),
                "payload without its trailing bytes"
            );
        }
        Err(CodecError::Malformed(_)) => {}
        Err(e) => panic!("a versioned payload cannot fail with {e:?}"),
    }
    result
}

/// Re-encodes a decoded message: no longer than the payload it came from (bincode accepts
/// varints longer than needed but writes the shortest), and decoding to the same message.
pub fn check_round_trip(msg: &Message, payload_len: usize) {
    let frame = encode(msg);
    assert!(
        frame.len() - LEN_PREFIX <= payload_len,
        "{} bytes re-encode to {}",
        payload_len,
        frame.len() - LEN_PREFIX
    );
    let (back, used) = decode_frame(&frame, DEFAULT_MAX_FRAME_LEN)
        .expect("a re-encoded message decodes")
        .expect("a re-encoded frame is complete");
    assert_eq!(used, frame.len(), "re-encoded frame consumed");
    assert_eq!(encode(&back), frame, "round trip");
}

fn labels_of(msg: &Message) -> Vec<&SoftLabels> {
    match msg {
        Message::RoundOpen(open) => vec![&open.target],
        Message::Contribution(c) => vec![&c.labels],
        Message::Finished { target, .. } => vec![target],
        _ => Vec::new(),
    }
}

/// [`SoftLabels::check_queries`] and [`SoftLabels::validate`] answer, never panic, and agree
/// with the labels' shape; validated labels can be read row by row.
pub fn check_labels(labels: &SoftLabels) {
    let ids = &labels.query_ids;
    assert_eq!(labels.check_queries(ids), Ok(()));
    let mut longer = ids.clone();
    longer.push(0);
    assert_eq!(
        labels.check_queries(&longer),
        Err(LabelError::QueryIds {
            position: ids.len()
        })
    );
    if let Some(last) = ids.len().checked_sub(1) {
        assert_eq!(
            labels.check_queries(&ids[..last]),
            Err(LabelError::QueryIds { position: last })
        );
        let mut other = ids.clone();
        other[last] = other[last].wrapping_add(1);
        assert_eq!(
            labels.check_queries(&other),
            Err(LabelError::QueryIds { position: last })
        );
    }

    let classes = usize::from(labels.classes);
    assert!(matches!(
        labels.validate(classes + 1),
        Err(LabelError::Classes { expected, got }) if expected == classes + 1 && got == classes
    ));
    let shaped = labels.probs.len() == ids.len() * classes;
    match labels.validate(classes) {
        Ok(()) => {
            assert!(shaped && labels.probs.iter().all(|v| v.is_finite()));
            for row in 0..labels.len() {
                assert!(labels.top_class(row) < classes);
            }
        }
        Err(LabelError::Shape { .. }) => assert!(!shaped),
        Err(LabelError::NonFinite { .. }) => {
            assert!(shaped && labels.probs.iter().any(|v| !v.is_finite()));
        }
        Err(LabelError::OffSimplex { .. }) => assert!(shaped),
        Err(e) => panic!("validate against its own classes: {e:?}"),
    }
}

/// Reads `stream` as a reader does: chunks of `chunk` bytes appended to a buffer, complete
/// frames taken off its front, stopping at the first error. Checks that this yields the same
/// messages, and stops at the same point with the same outcome, as decoding the whole stream
/// at once.
pub fn check_stream(stream: &[u8], chunk: usize, max: usize) {
    // All at once: frame after frame until one is incomplete or refused.
    let mut whole = Vec::new();
    let mut rest = stream;
    while let Some((msg, used)) = check_frame(rest, max) {
        whole.push(encode(&msg));
        rest = &rest[used..];
    }
    let whole_end = format!("{:?}", decode_frame(rest, max).map(|_| ()));

    // Chunk by chunk.
    let mut chunked = Vec::new();
    let mut buf = Vec::new();
    let mut chunked_end = None;
    'read: for piece in stream.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match decode_frame(&buf, max) {
                Ok(Some((msg, used))) => {
                    chunked.push(encode(&msg));
                    buf.drain(..used);
                }
                Ok(None) => break,
                Err(e) => {
                    chunked_end = Some(format!("{:?}", Err::<(), _>(e)));
                    break 'read;
                }
            }
        }
    }
    assert_eq!(chunked, whole, "frames read in chunks of {chunk}");
    match chunked_end {
        Some(end) => assert_eq!(end, whole_end, "where the chunked read stopped"),
        None => {
            assert_eq!(whole_end, "Ok(())", "the whole stream ends in an error");
            assert_eq!(buf, rest, "the incomplete tail");
        }
    }
}
