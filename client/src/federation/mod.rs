//! Taking part in the federation: the node's session as a state machine without I/O
//! ([`session::NodeSession`]), the quinn/tokio driver that feeds it ([`driver`]), and the
//! simulator's fault hook ([`hooks`]), which sits at the driver, never inside the logic.

pub mod driver;
mod error;
pub mod hooks;
pub mod secure;
pub mod session;

pub use driver::{SessionOutcome, SessionPlan, run_session, run_session_with_hook};
pub use error::SessionError;
pub use hooks::{ContributionHook, Outgoing};
pub use session::NodeSession;
