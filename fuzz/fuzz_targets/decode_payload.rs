//! Raw bytes as one payload (what follows a length prefix): [`decode_payload`], checked by
//! [`check_payload`] (which also round-trips any message and checks its soft labels).
//!
//! [`decode_payload`]: fd_protocol::codec::decode_payload

#![no_main]

use fd_protocol_fuzz::check_payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = check_payload(data);
});
