//! One node's session with the coordinator over mutual-TLS QUIC.
//!
//! The session is thin: it reads messages, hands training and labelling to the [`Learner`] on a
//! blocking thread (candle work is CPU-bound and must not stall the async runtime), and writes the
//! answers back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fd_certs::tls::TlsIdentity;
use fd_certs::transport::{self, TransportError};
use fd_protocol::{Contribution, Hello, Message, SoftLabels, Welcome};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::labeller::{LabelError, Labeller, Labels};
use crate::model::ModelError;
use crate::train::{Labelled, Learner};

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// TLS material could not be turned into a QUIC config.
    #[error("TLS setup: {0}")]
    Tls(#[from] fd_certs::CertError),
    /// The QUIC connection could not be set up.
    #[error("cannot connect to the coordinator at {addr}: {message}")]
    Connect {
        /// Coordinator address.
        addr: SocketAddr,
        /// The cause.
        message: String,
    },
    /// The coordinator closed the connection before welcoming this node; usually its
    /// certificate was refused (signed by another CA, expired, or not a node certificate).
    #[error(
        "not admitted by the coordinator at {addr}: {message} (is this node's certificate issued \
         by the federation CA?)"
    )]
    NotAdmitted {
        /// Coordinator address.
        addr: SocketAddr,
        /// The cause.
        message: String,
    },
    /// The coordinator refused this node.
    #[error("rejected by the coordinator: {0}")]
    Rejected(String),
    /// The coordinator reported an error.
    #[error("the coordinator reported an error: {0}")]
    Coordinator(String),
    /// A message could not be sent or received.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The coordinator sent something out of place.
    #[error("protocol violation by the coordinator: {0}")]
    Protocol(String),
    /// Training failed.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// Labelling (teachers or the privacy machinery) failed.
    #[error("labelling: {0}")]
    Label(#[from] LabelError),
    /// This node cannot take part on the federation's terms.
    #[error("{0}")]
    Terms(String),
}

/// What a node needs to take part.
#[derive(Debug)]
pub struct SessionPlan {
    /// Coordinator address.
    pub coordinator: SocketAddr,
    /// Name in the coordinator's certificate (e.g. `localhost`).
    pub server_name: String,
    /// CA, certificate and key.
    pub tls: TlsIdentity,
    /// Records in the private training split.
    pub private_records: u32,
    /// The held-out set the node measures itself on.
    pub holdout: Labelled,
    /// Maximum frame size accepted.
    pub max_frame_len: usize,
}

/// What a finished session produced.
#[derive(Debug)]
pub struct SessionOutcome {
    /// The node's identity as the coordinator named it (from its certificate).
    pub node: String,
    /// Rounds the node contributed to whose contribution the coordinator did not refuse.
    pub rounds: u32,
    /// Held-out accuracy after each round's training.
    pub round_accuracy: Vec<f64>,
    /// Held-out accuracy after distilling from the final target.
    pub final_accuracy: f64,
    /// Bytes this node sent.
    pub bytes_up: u64,
    /// Bytes this node received.
    pub bytes_down: u64,
    /// Wall time of the session.
    pub seconds: f64,
    /// The trained learner (its student is the node's product).
    pub learner: Learner,
    /// The labeller (in private mode: the teachers and the ledger).
    pub labeller: Labeller,
    /// Why the node stopped contributing early, if it did (e.g. its budget ran out).
    pub left: Option<String>,
}

/// Per-round numbers for the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundLog {
    /// Round.
    pub round: u32,
    /// Cross-entropy weight used.
    pub alpha: f64,
    /// Held-out accuracy after the round's training.
    pub accuracy: f64,
}

/// Finishes our stream and waits (up to 10 s) until the coordinator has read all of it, so
/// that closing the connection right after cannot drop our last message.
async fn finish_stream(send: &mut quinn::SendStream) {
    if let Err(e) = send.finish() {
        warn!("closing stream: {e}");
        return;
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), send.stopped()).await;
}

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

/// Runs one node from connection to `Finished`.
pub async fn run_session(
    plan: SessionPlan,
    learner: Learner,
    labeller: Labeller,
) -> Result<SessionOutcome, SessionError> {
    run_session_with_hook(plan, learner, labeller, None).await
}

/// [`run_session`] with a [`ContributionHook`] (simulations only).
pub async fn run_session_with_hook(
    plan: SessionPlan,
    mut learner: Learner,
    mut labeller: Labeller,
    mut hook: Option<Box<dyn ContributionHook>>,
) -> Result<SessionOutcome, SessionError> {
    let started = Instant::now();
    let config = fd_certs::tls::client_config(&plan.tls)?;
    let endpoint = transport::client_endpoint(config)?;
    let max = plan.max_frame_len;
    let hello = Hello {
        public_records: learner.public_records() as u32,
        classes: learner.student().config().classes as u16,
        private_records: plan.private_records,
    };
    let non_private = matches!(labeller, Labeller::Student);
    let target = Target {
        addr: plan.coordinator,
        server_name: plan.server_name.clone(),
        max,
    };
    let mut link = join(&endpoint, &target, &hello, non_private).await?;
    info!(
        node = %link.welcome.node,
        federation = %link.welcome.federation,
        rounds = link.welcome.rounds,
        planned_queries = link.welcome.planned_queries,
        privacy = %labeller.statement(),
        "admitted"
    );
    let node = link.welcome.node.clone();
    let planned_queries = link.welcome.planned_queries;
    let mut bytes_up = link.bytes_up;
    let mut bytes_down = link.bytes_down;

    let classes = learner.student().config().classes;
    let public = learner.public_records();
    let check_target = |t: &SoftLabels| -> Result<(), SessionError> {
        if t.is_empty() {
            return Ok(());
        }
        t.validate(classes)
            .map_err(|e| SessionError::Protocol(format!("target: {e}")))?;
        if let Some(bad) = t.query_ids.iter().find(|&&q| q as usize >= public) {
            return Err(SessionError::Protocol(format!(
                "target names public record {bad}, but the public set has {public}"
            )));
        }
        Ok(())
    };

    let holdout = plan.holdout;
    let mut round_accuracy = Vec::new();
    let mut contributed = Contributed::default();
    loop {
        let (msg, n) = match transport::read_message(&mut link.recv, max).await {
            Ok(Some(read)) => read,
            Ok(None) => {
                let why = "the coordinator closed the stream before Finished";
                link = reconnect(&endpoint, &target, &hello, non_private, why.into()).await?;
                bytes_up += link.bytes_up;
                bytes_down += link.bytes_down;
                continue;
            }
            Err(e) if connection_lost(&e) => {
                link = reconnect(&endpoint, &target, &hello, non_private, e.to_string()).await?;
                bytes_up += link.bytes_up;
                bytes_down += link.bytes_down;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        bytes_down += n as u64;
        match msg {
            Message::RoundOpen(open) => {
                check_target(&open.target)?;
                if let Some(bad) = open.query_ids.iter().find(|&&q| q as usize >= public) {
                    return Err(SessionError::Protocol(format!(
                        "round {} asks for public record {bad}, but the public set has {public}",
                        open.round
                    )));
                }
                let alpha = learner.config().alpha(open.round, open.rounds);
                let holdout_ref = holdout.clone();
                let (back, back_labeller, result) = tokio::task::spawn_blocking(move || {
                    let result = (|| {
                        learner.set_round(open.round, open.rounds)?;
                        learner.set_target(&labeller.student_target(&open.target))?;
                        let steps = if open.target.is_empty() {
                            learner.config().local_steps
                        } else {
                            learner.config().steps_per_round
                        };
                        learner.train(steps, alpha)?;
                        let accuracy = learner.accuracy(&holdout_ref)?;
                        let labels = labeller.label_round(
                            &learner,
                            open.round,
                            open.rounds,
                            &open.query_ids,
                            planned_queries,
                        )?;
                        Ok::<_, SessionError>((open.round, accuracy, labels))
                    })();
                    (learner, labeller, result)
                })
                .await
                .map_err(|e| SessionError::Protocol(format!("training thread failed: {e}")))?;
                learner = back;
                labeller = back_labeller;
                let (round, accuracy, labels) = result?;
                let temperature = learner.temperature();
                info!(round, alpha, temperature, accuracy, "trained and labelled");
                round_accuracy.push(accuracy);
                let (labels, receipt) = match labels {
                    Labels::Release(labels, receipt) => (labels, receipt),
                    Labels::BudgetSpent(reason) => {
                        // Nothing was drawn or sent for this round. Tell the coordinator why
                        // and stop; the federation goes on without this node.
                        warn!(
                            round,
                            "privacy budget spent; leaving the federation: {reason}"
                        );
                        let leave = Message::Leave {
                            reason: format!("privacy budget spent: {reason}"),
                        };
                        bytes_up +=
                            transport::write_message(&mut link.send, &leave, max).await? as u64;
                        finish_stream(&mut link.send).await;
                        link.connection.close(0u32.into(), b"budget spent");
                        endpoint.wait_idle().await;
                        return Ok(SessionOutcome {
                            node,
                            rounds: contributed.count(),
                            final_accuracy: accuracy,
                            round_accuracy,
                            bytes_up,
                            bytes_down,
                            seconds: started.elapsed().as_secs_f64(),
                            learner,
                            labeller,
                            left: Some(reason),
                        });
                    }
                };
                let mut labels = labels;
                match hook.as_mut().map(|h| h.outgoing(round, &mut labels)) {
                    None | Some(Outgoing::Send) => {}
                    Some(Outgoing::Delay(d)) => tokio::time::sleep(d).await,
                    Some(Outgoing::Vanish) => {
                        warn!(round, "vanishing mid-round (simulated failure)");
                        link.connection.close(1u32.into(), b"vanished");
                        return Ok(SessionOutcome {
                            node,
                            rounds: contributed.count(),
                            final_accuracy: accuracy,
                            round_accuracy,
                            bytes_up,
                            bytes_down,
                            seconds: started.elapsed().as_secs_f64(),
                            learner,
                            labeller,
                            left: Some(format!("vanished in round {round} (simulated)")),
                        });
                    }
                }
                let contribution = Message::Contribution(Contribution {
                    round,
                    labels,
                    receipt,
                });
                match transport::write_message(&mut link.send, &contribution, max).await {
                    Ok(n) => bytes_up += n as u64,
                    // The contribution is lost with the connection; once back, the node is
                    // asked again for whichever round is open.
                    Err(e) if connection_lost(&e) => {
                        link = reconnect(&endpoint, &target, &hello, non_private, e.to_string())
                            .await?;
                        bytes_up += link.bytes_up;
                        bytes_down += link.bytes_down;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
                contributed.sent(round);
            }
            Message::RoundClosed(closed) => {
                info!(
                    round = closed.round,
                    accepted = closed.accepted,
                    asked = closed.asked,
                    "round closed"
                );
            }
            Message::Finished { rounds, target } => {
                check_target(&target)?;
                let alpha = learner.config().alpha_end;
                let holdout_ref = holdout.clone();
                let target = labeller.student_target(&target);
                let (back, result) = tokio::task::spawn_blocking(move || {
                    let result = (|| {
                        learner.set_round(rounds, rounds)?;
                        learner.set_target(&target)?;
                        learner.train(learner.config().steps_per_round, alpha)?;
                        learner.accuracy(&holdout_ref)
                    })();
                    (learner, result)
                })
                .await
                .map_err(|e| SessionError::Protocol(format!("training thread failed: {e}")))?;
                learner = back;
                let final_accuracy = result?;
                info!(rounds, final_accuracy, "federation finished");
                // Tell the coordinator we are done, then let the close reach it.
                finish_stream(&mut link.send).await;
                link.connection.close(0u32.into(), b"done");
                endpoint.wait_idle().await;
                return Ok(SessionOutcome {
                    node,
                    rounds: contributed.count(),
                    round_accuracy,
                    final_accuracy,
                    bytes_up,
                    bytes_down,
                    seconds: started.elapsed().as_secs_f64(),
                    learner,
                    labeller,
                    left: None,
                });
            }
            Message::Refused { round, reason } => {
                // One contribution was not counted (e.g. it arrived after the deadline); the
                // node carries on with the next round.
                warn!(round, "contribution refused by the coordinator: {reason}");
                contributed.refused(round);
            }
            Message::Error { message } => return Err(SessionError::Coordinator(message)),
            Message::Reject { reason } => return Err(SessionError::Rejected(reason)),
            other => {
                return Err(SessionError::Protocol(format!(
                    "unexpected {} from the coordinator",
                    other.kind()
                )));
            }
        }
    }
}

/// The rounds this node's contributions count in, as far as the node can tell.
///
/// A contribution counts once sent and stops counting when the coordinator refuses it (late,
/// duplicate, malformed): the coordinator refuses at once or accepts silently. A round asked
/// again (the contribution was lost with a connection, or a restarted coordinator lost the
/// round uncommitted) counts once; the coordinator never asks again for a round whose
/// contribution it holds, so the second answer is not a refused duplicate of an accepted one.
/// What the node cannot see: an answer sent after the last round closed, which the coordinator
/// no longer reads once it has sent Finished, is neither refused nor counted by it.
#[derive(Debug, Default)]
struct Contributed {
    rounds: std::collections::BTreeSet<u32>,
}

impl Contributed {
    /// A contribution to `round` was sent.
    fn sent(&mut self, round: u32) {
        self.rounds.insert(round);
    }

    /// The coordinator refused this node's contribution to `round`.
    fn refused(&mut self, round: u32) {
        self.rounds.remove(&round);
    }

    /// Rounds counted.
    fn count(&self) -> u32 {
        self.rounds.len() as u32
    }
}

/// Where the coordinator is.
struct Target {
    addr: SocketAddr,
    server_name: String,
    max: usize,
}

/// One admitted connection to the coordinator.
struct Link {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    welcome: Welcome,
    bytes_up: u64,
    bytes_down: u64,
}

/// First wait before reconnecting; doubled after each failed attempt.
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(200);
/// Longest wait between attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);
/// A node gives up when the coordinator stays unreachable this long (a restart takes seconds;
/// the nodes' own idle timeout is a minute).
const RECONNECT_FOR: Duration = Duration::from_secs(180);

/// Whether a transport error means the connection is gone (worth reconnecting: a crash, a
/// reset, a network outage), rather than closed on purpose by the coordinator or the
/// coordinator sending something unreadable (which reconnecting would not cure).
fn connection_lost(e: &TransportError) -> bool {
    use quinn::{ConnectionError, ReadError, WriteError};
    let closed_on_purpose = |c: &ConnectionError| {
        matches!(
            c,
            ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed
        )
    };
    match e {
        TransportError::Read(ReadError::ConnectionLost(c))
        | TransportError::Write(WriteError::ConnectionLost(c))
        | TransportError::Connection(c) => !closed_on_purpose(c),
        TransportError::Read(_)
        | TransportError::Write(_)
        | TransportError::Truncated { .. }
        | TransportError::ClosedStream(_) => true,
        _ => false,
    }
}

/// Connects, says Hello and waits for Welcome.
async fn join(
    endpoint: &quinn::Endpoint,
    target: &Target,
    hello: &Hello,
    non_private: bool,
) -> Result<Link, SessionError> {
    let addr = target.addr;
    let max = target.max;
    let connecting =
        endpoint
            .connect(addr, &target.server_name)
            .map_err(|e| SessionError::Connect {
                addr,
                message: e.to_string(),
            })?;
    let connection = connecting.await.map_err(|e| SessionError::Connect {
        addr,
        message: e.to_string(),
    })?;
    // With TLS 1.3 the handshake completes on our side before the coordinator has checked our
    // certificate: we count ourselves admitted only once Welcome arrives.
    let not_admitted = |e: &dyn std::fmt::Display| SessionError::NotAdmitted {
        addr,
        message: e.to_string(),
    };
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| not_admitted(&e))?;
    let bytes_up = transport::write_message(&mut send, &Message::Hello(hello.clone()), max)
        .await
        .map_err(|e| not_admitted(&e))? as u64;
    match transport::read_message(&mut recv, max).await {
        Ok(Some((Message::Welcome(welcome), n))) => {
            if welcome.require_privacy && non_private {
                let why = "this federation requires differential privacy; set [privacy] mode = \
                           \"shards\" in the node config";
                let leave = Message::Leave { reason: why.into() };
                let _ = transport::write_message(&mut send, &leave, max).await;
                let _ = send.finish();
                connection.close(0u32.into(), b"terms");
                return Err(SessionError::Terms(why.into()));
            }
            Ok(Link {
                connection,
                send,
                recv,
                welcome,
                bytes_up,
                bytes_down: n as u64,
            })
        }
        Ok(Some((Message::Reject { reason }, _))) => Err(SessionError::Rejected(reason)),
        Ok(Some((other, _))) => Err(SessionError::Protocol(format!(
            "expected Welcome, got {}",
            other.kind()
        ))),
        Ok(None) => Err(not_admitted(&"connection closed")),
        Err(e) => Err(not_admitted(&e)),
    }
}

/// Joins again after the connection was lost, with exponential back-off, for up to
/// [`RECONNECT_FOR`]. A refusal on the federation's terms ends the session at once.
async fn reconnect(
    endpoint: &quinn::Endpoint,
    target: &Target,
    hello: &Hello,
    non_private: bool,
    mut why: String,
) -> Result<Link, SessionError> {
    let give_up = Instant::now() + RECONNECT_FOR;
    let mut delay = RECONNECT_FIRST_DELAY;
    loop {
        warn!(
            coordinator = %target.addr,
            "connection to the coordinator lost ({why}); reconnecting in {delay:?}"
        );
        tokio::time::sleep(delay).await;
        match join(endpoint, target, hello, non_private).await {
            Ok(link) => {
                info!(node = %link.welcome.node, "reconnected; resuming");
                return Ok(link);
            }
            Err(e @ (SessionError::Connect { .. } | SessionError::NotAdmitted { .. }))
                if Instant::now() < give_up =>
            {
                why = e.to_string();
                delay = (delay * 2).min(RECONNECT_MAX_DELAY);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_contributions_do_not_count_and_a_round_asked_again_counts_once() {
        let mut contributed = Contributed::default();
        for round in 0..3 {
            contributed.sent(round);
        }
        // Round 0's answer arrived after its deadline.
        contributed.refused(0);
        assert_eq!(contributed.count(), 2);
        // A refusal for a round this node never answered changes nothing.
        contributed.refused(7);
        assert_eq!(contributed.count(), 2);
        // Round 3 sent, lost with the connection, asked again and sent again: one round.
        contributed.sent(3);
        contributed.sent(3);
        assert_eq!(contributed.count(), 3);
    }
}
