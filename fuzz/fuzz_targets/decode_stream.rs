//! Raw bytes as a stream of frames, read as a reader does: the first byte picks the size of
//! the chunks the rest arrives in, and [`check_stream`] takes frames off the front of the
//! buffer until one is incomplete or refused, comparing with the whole stream decoded at once.

#![no_main]

use fd_protocol::DEFAULT_MAX_FRAME_LEN;
use fd_protocol_fuzz::{SMALL_MAX, check_stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    // Chunks of 1 to 256 bytes: any byte value picks one.
    let chunk = usize::from(chunk) + 1;
    check_stream(stream, chunk, DEFAULT_MAX_FRAME_LEN);
    check_stream(stream, chunk, SMALL_MAX);
});
