//! Fault injection for simulations, applied by the driver to each contribution on its way out.

use fd_protocol::SoftLabels;

/// What happens to a contribution on its way out, as a [`ContributionHook`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// Send it now.
    Send,
    /// Send it after this long (a straggler).
    Delay(std::time::Duration),
    /// Do not send it: drop the connection without a word and end the session (a node that
    /// vanishes mid-round).
    Vanish,
}

/// Fault injection for simulations: sees (and may alter) each contribution before it leaves.
/// A real node runs without one ([`run_session`]); the simulator's adversaries and failures are
/// written against this trait and live in `fd-sim`, not here.
pub trait ContributionHook: Send {
    /// Called once per round with the labels about to be sent.
    fn outgoing(&mut self, round: u32, labels: &mut SoftLabels) -> Outgoing;
}
