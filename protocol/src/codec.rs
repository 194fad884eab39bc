//! Length-prefixed frames carrying bincode-encoded [`Message`]s.
//!
//! A frame is a 4-byte big-endian length `n` followed by `n` payload bytes. The payload is a
//! 2-byte big-endian protocol version followed by the bincode encoding of one [`Message`].
//!
//! bincode lives behind this module alone (it is no longer maintained; swapping it out must touch
//! nothing else). Decoding is bounded twice: the length prefix is checked against the caller's
//! maximum before any buffer is allocated, and bincode itself runs with a hard allocation limit,
//! so a hostile length field inside the payload cannot make it reserve memory either.

use crate::Message;

/// Protocol version written in, and required of, every frame.
pub const PROTOCOL_VERSION: u16 = 3;

/// Default maximum payload length of one frame: 32 MiB, enough for the target of a public set of
/// ~800k queries x 10 classes, far beyond anything the simulations send.
pub const DEFAULT_MAX_FRAME_LEN: usize = 32 * 1024 * 1024;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Hard limit handed to bincode: no decode may allocate more than this, whatever the caller's
/// maximum. Same as the default frame maximum.
const BINCODE_LIMIT: usize = DEFAULT_MAX_FRAME_LEN;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<BINCODE_LIMIT>()
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The length prefix announces more than the allowed maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Allowed maximum.
        max: usize,
    },
    /// The payload is too short to hold a version.
    #[error("frame of {len} bytes is too short to hold a protocol version")]
    TooShort {
        /// Payload length.
        len: usize,
    },
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {got}; this build speaks {supported}")]
    UnsupportedVersion {
        /// Version in the frame.
        got: u16,
        /// Version this build speaks.
        supported: u16,
    },
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The payload holds bytes after the message.
    #[error("{extra} trailing bytes after the message")]
    TrailingBytes {
        /// Number of unread bytes.
        extra: usize,
    },
    /// The message could not be encoded (it would exceed the limit).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Encodes `msg` into a complete frame (length prefix included).
pub fn encode_frame(msg: &Message, max_frame_len: usize) -> Result<Vec<u8>, CodecError> {
    let mut frame = vec![0u8; LEN_PREFIX];
    frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    let body = bincode::serde::encode_to_vec(msg, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    frame.extend_from_slice(&body);
    let len = frame.len() - LEN_PREFIX;
    if len > max_frame_len {
        return Err(CodecError::FrameTooLarge {
            len,
            max: max_frame_len,
        });
    }
    // `len <= max_frame_len <= usize`, and the check below keeps it within u32.
    let prefix = u32::try_from(len).map_err(|_| CodecError::FrameTooLarge {
        len,
        max: u32::MAX as usize,
    })?;
    frame[..LEN_PREFIX].copy_from_slice(&prefix.to_be_bytes());
    Ok(frame)
}

/// Reads a length prefix and checks it against the maximum; returns the payload length to read.
pub fn payload_len(prefix: [u8; LEN_PREFIX], max_frame_len: usize) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_frame_len {
        return Err(CodecError::FrameTooLarge {
            len,
            max: max_frame_len,
        });
    }
    Ok(len)
}

/// Decodes one payload (the bytes after the length prefix).
pub fn decode_payload(payload: &[u8]) -> Result<Message, CodecError> {
    if payload.len() < 2 {
        return Err(CodecError::TooShort { len: payload.len() });
    }
    let got = u16::from_be_bytes([payload[0], payload[1]]);
    if got != PROTOCOL_VERSION {
        return Err(CodecError::UnsupportedVersion {
            got,
            supported: PROTOCOL_VERSION,
        });
    }
    let (msg, read): (Message, usize) = bincode::serde::decode_from_slice(&payload[2..], config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    let extra = payload.len() - 2 - read;
    if extra != 0 {
        return Err(CodecError::TrailingBytes { extra });
    }
    Ok(msg)
}

/// Tries to decode one frame from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` holds an incomplete frame (read more and try again), or the
/// message and the number of bytes it used.
pub fn decode_frame(
    buf: &[u8],
    max_frame_len: usize,
) -> Result<Option<(Message, usize)>, CodecError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = payload_len(*prefix, max_frame_len)?;
    let Some(payload) = buf.get(LEN_PREFIX..LEN_PREFIX + len) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, LEN_PREFIX + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Contribution, Hello, PrivacyReceipt, RoundClosed, RoundOpen, SoftLabels, Welcome};
    use rand::{Rng, RngExt, SeedableRng, rngs::StdRng};

    fn labels() -> SoftLabels {
        SoftLabels {
            classes: 3,
            query_ids: vec![4, 8],
            probs: vec![0.2, 0.3, 0.5, 1.0, 0.0, 0.0],
        }
    }

    fn every_message() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                public_records: 359,
                classes: 10,
                private_records: 108,
                public_sha256: Some([7; 32]),
                private: true,
            }),
            Message::Welcome(Welcome {
                node: "hospital-a".into(),
                federation: "demo".into(),
                rounds: 20,
                require_privacy: true,
                planned_queries: 7180,
            }),
            Message::Reject {
                reason: "full".into(),
            },
            Message::RoundOpen(RoundOpen {
                round: 3,
                rounds: 20,
                query_ids: vec![1, 2, 3],
                target: labels(),
                secure: None,
            }),
            Message::RoundOpen(RoundOpen {
                round: 4,
                rounds: 20,
                query_ids: vec![1, 2],
                target: SoftLabels::default(),
                secure: Some(crate::SecureRound {
                    context: [3; 32],
                    node: 2,
                    roster: 5,
                    threshold: 4,
                    min_survivors: 3,
                }),
            }),
            Message::Contribution(Contribution {
                round: 3,
                labels: labels(),
                receipt: Some(PrivacyReceipt {
                    mechanism: "subsample-and-aggregate+gaussian".into(),
                    unit: "record".into(),
                    sigma: 3.5,
                    sensitivity: 2.0,
                    rho: 0.1,
                    rho_total: 0.3,
                    epsilon_total: 1.9,
                    delta: 1e-5,
                    floor_epsilon_total: None,
                }),
            }),
            Message::RoundClosed(RoundClosed {
                round: 3,
                accepted: 9,
                asked: 10,
            }),
            Message::Finished {
                rounds: 20,
                target: labels(),
            },
            Message::Error {
                message: "bad".into(),
            },
            Message::Leave {
                reason: "budget".into(),
            },
            Message::Refused {
                round: 4,
                reason: "late".into(),
            },
            Message::KeyAdvert {
                round: 4,
                advert: advert(),
                certificate: vec![0x30, 0x82],
            },
            Message::Roster {
                round: 4,
                adverts: vec![crate::SignedAdvert {
                    advert: advert(),
                    certificate: vec![0x30],
                }],
            },
            Message::KeyShares {
                round: 4,
                shares: vec![shares()],
            },
            Message::Inbox {
                round: 4,
                shares: vec![shares(), shares()],
            },
            Message::Masked(crate::Masked {
                round: 4,
                masked: fd_secagg::MaskedInput {
                    node: 2,
                    values: vec![0, u32::MAX, 7],
                },
                teachers: 12,
                receipt: None,
            }),
            Message::Unmask {
                round: 4,
                survivors: vec![1, 2, 5],
            },
            Message::Unmasked {
                round: 4,
                response: fd_secagg::UnmaskResponse {
                    node: 2,
                    revealed: vec![
                        fd_secagg::Revealed::SelfSeed {
                            of: 1,
                            share: vec![1; 33],
                        },
                        fd_secagg::Revealed::MaskKey {
                            of: 3,
                            share: vec![2; 33],
                        },
                    ],
                },
            },
        ]
    }

    fn advert() -> fd_secagg::KeyAdvert {
        fd_secagg::KeyAdvert {
            node: 2,
            cipher_key: [1; 32],
            mask_key: [2; 32],
            signature: vec![9; 64],
        }
    }

    fn shares() -> fd_secagg::EncryptedShares {
        fd_secagg::EncryptedShares {
            from: 2,
            to: 3,
            ciphertext: vec![5; 82],
        }
    }

    #[test]
    fn every_message_round_trips() {
        for msg in every_message() {
            let frame = encode_frame(&msg, DEFAULT_MAX_FRAME_LEN).unwrap();
            let (back, used) = decode_frame(&frame, DEFAULT_MAX_FRAME_LEN)
                .unwrap()
                .expect("complete frame");
            assert_eq!(back, msg);
            assert_eq!(used, frame.len());
        }
    }

    #[test]
    fn truncated_frames_are_incomplete_or_errors_never_panics() {
        for msg in every_message() {
            let frame = encode_frame(&msg, DEFAULT_MAX_FRAME_LEN).unwrap();
            for cut in 0..frame.len() {
                // A cut frame is simply incomplete: the prefix still announces the full length.
                assert!(matches!(
                    decode_frame(&frame[..cut], DEFAULT_MAX_FRAME_LEN),
                    Ok(None)
                ));
                // A cut payload presented as complete must be refused, not panic.
                if cut > LEN_PREFIX {
                    assert!(decode_payload(&frame[LEN_PREFIX..cut]).is_err());
                }
            }
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_reading_the_payload() {
        let prefix = (1024u32 + 1).to_be_bytes();
        let err = payload_len(prefix, 1024).unwrap_err();
        assert!(matches!(
            err,
            CodecError::FrameTooLarge {
                len: 1025,
                max: 1024
            }
        ));
        // decode_frame refuses on the prefix alone, although no payload bytes follow.
        assert!(decode_frame(&u32::MAX.to_be_bytes(), 1024).is_err());
    }

    #[test]
    fn encoding_past_the_maximum_is_refused() {
        let msg = Message::Error {
            message: "x".repeat(100),
        };
        assert!(matches!(
            encode_frame(&msg, 50),
            Err(CodecError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn wrong_version_is_named() {
        let mut frame = encode_frame(&every_message()[0], DEFAULT_MAX_FRAME_LEN).unwrap();
        frame[LEN_PREFIX..LEN_PREFIX + 2].copy_from_slice(&7u16.to_be_bytes());
        let err = decode_frame(&frame, DEFAULT_MAX_FRAME_LEN).unwrap_err();
        assert!(matches!(
            err,
            CodecError::UnsupportedVersion {
                got: 7,
                supported: PROTOCOL_VERSION
            }
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let frame = encode_frame(&every_message()[2], DEFAULT_MAX_FRAME_LEN).unwrap();
        let mut payload = frame[LEN_PREFIX..].to_vec();
        payload.push(0);
        assert!(matches!(
            decode_payload(&payload),
            Err(CodecError::TrailingBytes { extra: 1 })
        ));
    }

    #[test]
    fn hostile_inner_length_does_not_allocate() {
        // Version, then variant 4 (Contribution), round 0, then a SoftLabels whose classes is 0
        // and whose query_ids Vec claims u64::MAX elements (bincode varint tag 253 = u64).
        let mut payload = PROTOCOL_VERSION.to_be_bytes().to_vec();
        payload.extend_from_slice(&[4, 0, 0, 253]);
        payload.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode_payload(&payload),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        // Seeded so a failure reproduces; 20k inputs of up to 256 bytes.
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.random_range(0..256usize);
            let mut bytes = vec![0u8; len];
            rng.fill_bytes(&mut bytes);
            // Half the time, give it a valid version so bincode itself is exercised.
            if len >= 2 && rng.random::<bool>() {
                bytes[..2].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
            }
            // Whatever decodes must survive a round trip unchanged (compared as bytes, since
            // random floats may be NaN).
            if let Ok(msg) = decode_payload(&bytes) {
                let once = encode_frame(&msg, DEFAULT_MAX_FRAME_LEN).unwrap();
                let back = decode_payload(&once[LEN_PREFIX..]).unwrap();
                assert_eq!(encode_frame(&back, DEFAULT_MAX_FRAME_LEN).unwrap(), once);
            }
            let _ = decode_frame(&bytes, 1024);
        }
    }
}
