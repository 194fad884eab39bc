//! QUIC application close codes the coordinator closes a node's connection with.
//!
//! They are part of the wire language: a node reads the code to decide whether reconnecting
//! can help ([`reconnect_helps`]). The reason bytes that travel with a code are for people.

/// The federation is over (the endpoint closes at the end of the run).
pub const DONE: u32 = 0;
/// The peer's certificate carries no usable node name.
pub const NO_NAME: u32 = 1;
/// The peer's first message was not a readable Hello.
pub const NOT_HELLO: u32 = 2;
/// The peer sent no Hello in time.
pub const NO_HELLO: u32 = 3;
/// Another connection under the same node name replaced this one. Reconnecting would evict
/// that one in turn, so a node told this stops: two processes share one certificate.
pub const REPLACED: u32 = 4;
/// The node did not take its messages in time; it left the round and may reconnect.
pub const TOO_SLOW: u32 = 5;
/// The coordinator is shutting down with its state committed; a restart on the same state
/// continues, so the node reconnects.
pub const SHUTDOWN: u32 = 6;
/// The coordinator refused the node after reading from it (a Reject or an Error, sent first,
/// says why).
pub const REFUSED: u32 = 7;

/// Whether a node whose connection the coordinator closed with `code` should reconnect: the
/// coordinator will have it back ([`TOO_SLOW`], [`SHUTDOWN`]), as opposed to a refusal
/// or the end of the federation.
pub fn reconnect_helps(code: u64) -> bool {
    [TOO_SLOW, SHUTDOWN].iter().any(|&c| u64::from(c) == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_closes_invite_a_reconnect() {
        for code in [TOO_SLOW, SHUTDOWN] {
            assert!(reconnect_helps(code.into()), "{code}");
        }
        for code in [DONE, NO_NAME, NOT_HELLO, NO_HELLO, REPLACED, REFUSED] {
            assert!(!reconnect_helps(code.into()), "{code}");
        }
        // An unknown code (a newer coordinator) is not taken as an invitation.
        assert!(!reconnect_helps(1000));
    }
}
