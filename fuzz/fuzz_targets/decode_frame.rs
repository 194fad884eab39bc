//! Raw bytes as the start of a receive buffer: [`decode_frame`] with the default maximum and
//! with a small one, checked by [`check_frame`] (which also round-trips any message).
//!
//! [`decode_frame`]: fd_protocol::codec::decode_frame

#![no_main]

use fd_protocol::DEFAULT_MAX_FRAME_LEN;
use fd_protocol_fuzz::{SMALL_MAX, check_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_frame(data, DEFAULT_MAX_FRAME_LEN);
    check_frame(data, SMALL_MAX);
});
