//! The node's side of the round protocol as a state machine without I/O.
//!
//! [`NodeSession`] never touches a socket, a thread or the clock: the driver
//! ([`crate::federation::driver`]) feeds it what happened (a message, a finished piece of work,
//! a lost connection, the time) and polls it for what to do next (a message to send, work to
//! run, when to wake, what to tell the operator). Tests drive it on virtual time.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fd_protocol::{Contribution, Hello, Message, RoundOpen, SoftLabels, Welcome};
use tracing::{info, warn};

use crate::federation::error::SessionError;
use crate::federation::secure::{SecureIdentity, SecureState};
use crate::privacy::release::{Answer, SecureTerms};

/// First wait before reconnecting; doubled after each failed attempt.
pub const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(200);
/// Longest wait between attempts.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);
/// A node gives up when the coordinator stays unreachable this long (a restart takes seconds;
/// the nodes' own idle timeout is a minute).
pub const RECONNECT_FOR: Duration = Duration::from_secs(180);

/// QUIC application close code of a node that leaves on purpose (done, budget spent, terms).
pub const CLOSE_OK: u32 = 0;
/// QUIC application close code of a node that vanishes mid-round (simulated failure).
pub const CLOSE_VANISHED: u32 = 1;

/// What a session knows before it starts: public facts about the node and the coordinator.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Coordinator address (for error messages; the driver connects).
    pub coordinator: SocketAddr,
    /// What the node says in Hello.
    pub hello: Hello,
    /// Whether the node releases without noise (it then refuses a federation that requires
    /// privacy).
    pub non_private: bool,
    /// How long the first join keeps retrying a coordinator it cannot reach (with the same
    /// back-off as reconnects); zero: the first failure is final. A coordinator that refuses
    /// the node (its certificate, its terms) is never retried before it was once admitted.
    pub join_retry: Duration,
    /// What secure-aggregation rounds need; `None`: the node cannot take part in them (it
    /// leaves a federation that asks for them).
    pub secure: Option<SecureIdentity>,
}

/// CPU work the session asks the driver to run (on a blocking thread) and report back with
/// [`NodeSession::handle_work_done`].
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Train the student on the round's target, measure it, and label the round's queries.
    Round {
        /// The round as the coordinator opened it.
        open: RoundOpen,
        /// The coordinator's plan of queries for the whole run (from Welcome).
        planned_queries: u64,
        /// Set in a secure-aggregation round: release integer counts with a noise share
        /// priced on these terms.
        secure: Option<SecureTerms>,
    },
    /// Distil from the final target and measure the student.
    Distil {
        /// Rounds the federation ran.
        rounds: u32,
        /// The final global target.
        target: SoftLabels,
    },
}

/// What a piece of [`Work`] produced.
#[derive(Debug)]
pub enum WorkResult {
    /// A round's training and labelling.
    Round {
        /// The round.
        round: u32,
        /// Held-out accuracy after the round's training.
        accuracy: f64,
        /// The labels to send, or why nothing may be sent.
        answer: Answer,
    },
    /// The final distillation.
    Distilled {
        /// Held-out accuracy of the final student.
        accuracy: f64,
    },
}

/// What the session tells its driver, in the order it happens.
#[derive(Debug)]
pub enum Event {
    /// Open a connection to the coordinator now, then call [`NodeSession::handle_connected`]
    /// or [`NodeSession::handle_connect_failed`].
    Connect,
    /// The coordinator admitted the node (first join or reconnect).
    Admitted(Welcome),
    /// The connection is gone; the session asks to [`Event::Connect`] again after `delay`.
    Reconnecting {
        /// Why the last connection or attempt failed.
        why: String,
        /// Wait before the next attempt.
        delay: Duration,
    },
    /// Finish the stream once every polled message is written, and close the connection with
    /// this application code and reason.
    Close {
        /// QUIC application close code ([`CLOSE_OK`]).
        code: u32,
        /// Reason sent with the close.
        reason: &'static str,
    },
    /// The session is over: the federation finished and the student distilled its target.
    Finished,
    /// The session is over: the node left early, for this reason (its budget is spent).
    Left(String),
    /// The session is over: it failed.
    Failed(SessionError),
}

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the driver to connect (after [`Event::Connect`]).
    Connecting,
    /// Connected; Hello sent, waiting for Welcome.
    Joining,
    /// Admitted: rounds.
    Admitted,
    /// The connection is lost; waiting until `retry_at` to connect again.
    Waiting,
    /// Ended; nothing more happens.
    Over,
}

/// One node's session with the coordinator, as a state machine.
///
/// Methods, by kind (in the manner of `quinn_proto::Connection`):
/// - getters: [`node`](Self::node), [`rounds_contributed`](Self::rounds_contributed),
///   [`round_accuracy`](Self::round_accuracy), [`final_accuracy`](Self::final_accuracy),
///   [`left`](Self::left), [`is_admitted`](Self::is_admitted), [`is_over`](Self::is_over);
/// - `handle_*`: feed it what happened: [`handle`](Self::handle) (a message from the
///   coordinator), [`handle_connected`](Self::handle_connected),
///   [`handle_connect_failed`](Self::handle_connect_failed),
///   [`handle_connection_lost`](Self::handle_connection_lost),
///   [`handle_work_done`](Self::handle_work_done), [`handle_timeout`](Self::handle_timeout),
///   [`handle_abandon`](Self::handle_abandon) (the driver gives up on its own account, e.g. a
///   simulated vanishing node);
/// - `poll_*`: what to do next: [`poll_transmit`](Self::poll_transmit),
///   [`poll_event`](Self::poll_event), [`poll_work`](Self::poll_work),
///   [`poll_timeout`](Self::poll_timeout).
///
/// The driver polls in this order, and starts over from the top after every step it takes:
/// `poll_transmit` (write the message on the current connection), `poll_event` (act on it),
/// `poll_work` (run it and feed the result back), `poll_timeout` (sleep until then and call
/// `handle_timeout`); with nothing from any of them it reads the next message. Messages come
/// before events, so an [`Event::Close`] follows the last message it must not cut off, and a
/// Hello queued by `handle_connected` goes out before the driver waits for Welcome. The
/// session never reads the clock: every `now` comes from /// the caller.
#[derive(Debug)]
pub struct NodeSession {
    config: SessionConfig,
    phase: Phase,
    /// Set once the node was first admitted: failures to join after that are retried.
    welcome: Option<Welcome>,
    /// When to stop retrying, in the current outage.
    give_up_at: Option<Instant>,
    /// When to try to connect again, while waiting.
    retry_at: Option<Instant>,
    /// The wait before the next attempt after this one fails.
    next_delay: Duration,
    contributed: Contributed,
    /// The last contribution sent, so a round asked again is answered by re-sending it (a
    /// release re-sent is post-processing and costs nothing; new noise would be charged).
    last_contribution: Option<Contribution>,
    /// The secure round in progress, if any.
    secure_round: Option<SecureState>,
    round_accuracy: Vec<f64>,
    final_accuracy: f64,
    left: Option<String>,
    transmits: VecDeque<Message>,
    events: VecDeque<Event>,
    work: VecDeque<Work>,
}

impl NodeSession {
    /// A session that starts by asking its driver to connect.
    pub fn new(config: SessionConfig) -> NodeSession {
        NodeSession {
            config,
            phase: Phase::Connecting,
            welcome: None,
            give_up_at: None,
            retry_at: None,
            next_delay: RECONNECT_FIRST_DELAY,
            contributed: Contributed::default(),
            last_contribution: None,
            secure_round: None,
            round_accuracy: Vec::new(),
            final_accuracy: 0.0,
            left: None,
            transmits: VecDeque::new(),
            events: VecDeque::from([Event::Connect]),
            work: VecDeque::new(),
        }
    }

    // ---- getters ----

    /// The node's identity as the coordinator named it (from its certificate), once admitted.
    pub fn node(&self) -> Option<&str> {
        self.welcome.as_ref().map(|w| w.node.as_str())
    }

    /// Rounds whose contribution the coordinator did not refuse (see [`Contributed`]).
    pub fn rounds_contributed(&self) -> u32 {
        self.contributed.count()
    }

    /// Held-out accuracy after each round's training.
    pub fn round_accuracy(&self) -> &[f64] {
        &self.round_accuracy
    }

    /// Held-out accuracy of the final student (after the final distillation, or of the last
    /// round if the node left early).
    pub fn final_accuracy(&self) -> f64 {
        self.final_accuracy
    }

    /// Why the node stopped contributing early, if it did.
    pub fn left(&self) -> Option<&str> {
        self.left.as_deref()
    }

    /// Whether the coordinator has admitted the node on the current connection.
    pub fn is_admitted(&self) -> bool {
        self.phase == Phase::Admitted
    }

    /// Whether the session has ended.
    pub fn is_over(&self) -> bool {
        self.phase == Phase::Over
    }

    // ---- handle_* ----

    /// The driver connected (after [`Event::Connect`]): Hello goes out.
    pub fn handle_connected(&mut self, _now: Instant) {
        if self.phase != Phase::Connecting {
            return;
        }
        self.phase = Phase::Joining;
        self.transmits
            .push_back(Message::Hello(self.config.hello.clone()));
    }

    /// The driver could not connect (the coordinator is unreachable, or the handshake timed
    /// out): retried with back-off, on the first join for [`SessionConfig::join_retry`] and
    /// after it for [`RECONNECT_FOR`].
    pub fn handle_connect_failed(&mut self, now: Instant, why: String) {
        if self.phase != Phase::Connecting {
            return;
        }
        let addr = self.config.coordinator;
        self.attempt_failed(now, why.clone(), true, || SessionError::Connect {
            addr,
            message: why,
        });
    }

    /// The connection is gone (the coordinator crashed or restarted, the network failed, the
    /// stream ended before Finished). Before Welcome this is a failed attempt to join.
    pub fn handle_connection_lost(&mut self, now: Instant, why: String) {
        match self.phase {
            Phase::Joining | Phase::Connecting => {
                let addr = self.config.coordinator;
                self.attempt_failed(now, why.clone(), false, || SessionError::NotAdmitted {
                    addr,
                    message: why,
                });
            }
            Phase::Admitted => {
                // Whatever was queued for the old connection is lost with it; the coordinator
                // asks again for whichever round is open once the node is back. A secure round
                // cannot be resumed (the coordinator counts this node as dropped from it).
                self.transmits.clear();
                self.secure_round = None;
                self.give_up_at = Some(now + RECONNECT_FOR);
                self.next_delay = RECONNECT_FIRST_DELAY;
                self.wait(now, why);
            }
            Phase::Waiting | Phase::Over => {}
        }
    }

    /// A message from the coordinator.
    pub fn handle(&mut self, _now: Instant, message: Message) {
        match (self.phase, message) {
            (Phase::Over, _) => {}
            (Phase::Joining, Message::Welcome(welcome)) => self.admitted(welcome),
            (Phase::Joining, Message::Reject { reason }) => {
                self.fail(SessionError::Rejected(reason))
            }
            (Phase::Joining, other) => self.fail(SessionError::Protocol(format!(
                "expected Welcome, got {}",
                other.kind()
            ))),
            (Phase::Admitted, Message::RoundOpen(open)) => self.round_open(open),
            (Phase::Admitted, Message::Roster { round, adverts }) => {
                let identity = self.config.secure.clone();
                let step = match (self.secure_step(round, "Roster"), identity) {
                    (Ok(state), Some(identity)) => state.roster(&identity, &adverts),
                    (Ok(_), None) => Err(SessionError::Protocol(
                        "Roster outside a secure round".into(),
                    )),
                    (Err(e), _) => Err(e),
                };
                match step {
                    Ok(message) => self.transmits.push_back(message),
                    Err(e) => self.fail(e),
                }
            }
            (Phase::Admitted, Message::Inbox { round, shares }) => {
                match self.secure_step(round, "Inbox") {
                    Ok(state) => state.inbox(shares),
                    Err(e) => return self.fail(e),
                }
                self.try_mask();
            }
            (Phase::Admitted, Message::Unmask { round, survivors }) => {
                let answer = match self.secure_step(round, "Unmask") {
                    Ok(state) => state.unmask(&survivors),
                    Err(e) => return self.fail(e),
                };
                match answer {
                    Ok(message) => self.transmits.push_back(message),
                    // The round is lost, not under-noised; the federation goes on.
                    Err(why) => warn!(round, "not helping to unmask: {why}"),
                }
            }
            (Phase::Admitted, Message::RoundClosed(closed)) => {
                info!(
                    round = closed.round,
                    accepted = closed.accepted,
                    asked = closed.asked,
                    "round closed"
                );
            }
            (Phase::Admitted, Message::Finished { rounds, target }) => {
                match self.check_target(&target) {
                    Ok(()) => self.work.push_back(Work::Distil { rounds, target }),
                    Err(e) => self.fail(e),
                }
            }
            (Phase::Admitted, Message::Refused { round, reason }) => {
                // One contribution was not counted (e.g. it arrived after the deadline); the
                // node carries on with the next round.
                warn!(round, "contribution refused by the coordinator: {reason}");
                self.contributed.refused(round);
            }
            (Phase::Admitted, Message::Error { message }) => {
                self.fail(SessionError::Coordinator(message))
            }
            (Phase::Admitted, Message::Reject { reason }) => {
                self.fail(SessionError::Rejected(reason))
            }
            (_, other) => self.fail(SessionError::Protocol(format!(
                "unexpected {} from the coordinator",
                other.kind()
            ))),
        }
    }

    /// A piece of [`Work`] finished; `Err` if it failed (which ends the session).
    pub fn handle_work_done(&mut self, _now: Instant, result: Result<WorkResult, SessionError>) {
        if self.phase == Phase::Over {
            return;
        }
        match result {
            Err(e) => self.fail(e),
            Ok(WorkResult::Round {
                round,
                accuracy,
                answer,
            }) => {
                self.round_accuracy.push(accuracy);
                self.final_accuracy = accuracy;
                match answer {
                    Answer::Release(labels, receipt) => {
                        let contribution = Contribution {
                            round,
                            labels,
                            receipt,
                        };
                        self.send_contribution(contribution);
                    }
                    Answer::BudgetSpent(reason) => {
                        self.leave_unreleased(round, "privacy budget spent", reason)
                    }
                    Answer::Declined(reason) => {
                        self.leave_unreleased(round, "declined to spend (privacy plan)", reason)
                    }
                    Answer::Secure {
                        counts,
                        teachers,
                        receipt,
                    } => {
                        match self.secure_round.as_mut() {
                            Some(state) if state.round() == round => {
                                state.release(counts, teachers, receipt)
                            }
                            // The connection was lost meanwhile: this node dropped out of the
                            // round, and its noisy counts (charged) are never sent.
                            _ => warn!(round, "secure round gone before its release was ready"),
                        }
                        self.try_mask();
                    }
                }
            }
            Ok(WorkResult::Distilled { accuracy }) => {
                self.final_accuracy = accuracy;
                info!(final_accuracy = accuracy, "federation finished");
                self.close("done");
                self.end(Event::Finished);
            }
        }
    }

    /// Nothing was drawn or sent for `round`: tell the coordinator why and stop; the
    /// federation goes on without this node.
    fn leave_unreleased(&mut self, round: u32, why: &'static str, reason: String) {
        warn!(round, "{why}; leaving the federation: {reason}");
        self.transmits.push_back(Message::Leave {
            reason: format!("{why}: {reason}"),
        });
        self.close(why);
        self.left = Some(reason.clone());
        self.end(Event::Left(reason));
    }

    /// The time is `now`: a back-off wait may be over.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Waiting && self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
            self.phase = Phase::Connecting;
            self.events.push_back(Event::Connect);
        }
    }

    /// The driver ends the session on its own account (a simulated node that vanishes): no
    /// message, no close; the node counts as having left for `reason`. `unsent_round` names
    /// the round whose contribution the driver had polled but dropped instead of sending: it
    /// does not count.
    pub fn handle_abandon(&mut self, reason: String, unsent_round: Option<u32>) {
        if self.phase == Phase::Over {
            return;
        }
        if let Some(round) = unsent_round {
            self.contributed.refused(round);
        }
        self.transmits.clear();
        self.work.clear();
        self.left = Some(reason.clone());
        self.end(Event::Left(reason));
    }

    // ---- poll_* ----

    /// The next message to write on the current connection.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmits.pop_front()
    }

    /// The next thing to tell the driver.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next piece of CPU work to run.
    #[must_use]
    pub fn poll_work(&mut self) -> Option<Work> {
        if self.phase == Phase::Over {
            return None;
        }
        self.work.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout), if anything waits for a time.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting => self.retry_at,
            _ => None,
        }
    }

    // ---- inside ----

    fn admitted(&mut self, welcome: Welcome) {
        if welcome.require_privacy && self.config.non_private {
            let why = "this federation requires differential privacy; set [privacy] mode = \
                       \"shards\" in the node config";
            self.transmits
                .push_back(Message::Leave { reason: why.into() });
            self.close("terms");
            self.fail(SessionError::Terms(why.into()));
            return;
        }
        if self.welcome.is_some() {
            info!(node = %welcome.node, "reconnected; resuming");
        }
        self.phase = Phase::Admitted;
        self.give_up_at = None;
        self.next_delay = RECONNECT_FIRST_DELAY;
        self.welcome = Some(welcome.clone());
        self.events.push_back(Event::Admitted(welcome));
    }

    /// The secure round `round` for a message of kind `kind`, or the protocol fault.
    fn secure_step(&mut self, round: u32, kind: &str) -> Result<&mut SecureState, SessionError> {
        match self.secure_round.as_mut() {
            Some(state) if state.round() == round => Ok(state),
            _ => Err(SessionError::Protocol(format!(
                "{kind} for round {round}, which is not this node's secure round in progress"
            ))),
        }
    }

    /// Sends the masked vector once the inbox and the counts are both in.
    fn try_mask(&mut self) {
        let Some(state) = self.secure_round.as_mut() else {
            return;
        };
        match state.try_mask() {
            Ok(Some(message)) => {
                self.contributed.sent(state.round());
                self.transmits.push_back(message);
            }
            Ok(None) => {}
            Err(e) => self.fail(e),
        }
    }

    fn round_open(&mut self, open: RoundOpen) {
        if let Err(e) = self.check_target(&open.target) {
            return self.fail(e);
        }
        let public = self.config.hello.public_records as usize;
        if let Some(bad) = open.query_ids.iter().find(|&&q| q as usize >= public) {
            return self.fail(SessionError::Protocol(format!(
                "round {} asks for public record {bad}, but the public set has {public}",
                open.round
            )));
        }
        if let Some(last) = &self.last_contribution
            && last.round == open.round
            && last.labels.query_ids == open.query_ids
        {
            info!(
                round = open.round,
                "round asked again: re-sending its release, already paid for"
            );
            let again = last.clone();
            self.send_contribution(again);
            return;
        }
        let planned_queries = self.welcome.as_ref().map_or(0, |w| w.planned_queries);
        let mut terms = None;
        if let Some(secure) = &open.secure {
            let Some(identity) = &self.config.secure else {
                let why = "this federation runs secure aggregation, which needs a private node \
                           ([privacy] mode = \"shards\") with its certificate key";
                self.transmits
                    .push_back(Message::Leave { reason: why.into() });
                self.close("terms");
                return self.fail(SessionError::Terms(why.into()));
            };
            let classes = usize::from(self.config.hello.classes);
            match SecureState::open(identity, &open, secure, classes) {
                Ok((state, advert)) => {
                    terms = Some(state.terms());
                    self.secure_round = Some(state);
                    self.transmits.push_back(advert);
                }
                Err(e) => return self.fail(e),
            }
        }
        self.work.push_back(Work::Round {
            open,
            planned_queries,
            secure: terms,
        });
    }

    fn send_contribution(&mut self, contribution: Contribution) {
        self.contributed.sent(contribution.round);
        self.last_contribution = Some(contribution.clone());
        self.transmits
            .push_back(Message::Contribution(contribution));
    }

    /// Checks a target from the coordinator against the node's public set and classes.
    fn check_target(&self, target: &SoftLabels) -> Result<(), SessionError> {
        if target.is_empty() {
            return Ok(());
        }
        let classes = usize::from(self.config.hello.classes);
        target
            .validate(classes)
            .map_err(|e| SessionError::Protocol(format!("target: {e}")))?;
        let public = self.config.hello.public_records as usize;
        if let Some(bad) = target.query_ids.iter().find(|&&q| q as usize >= public) {
            return Err(SessionError::Protocol(format!(
                "target names public record {bad}, but the public set has {public}"
            )));
        }
        Ok(())
    }

    /// An attempt to connect or join failed. Before the first Welcome only an unreachable
    /// coordinator (`retry_first_join`) is retried, for [`SessionConfig::join_retry`]; after
    /// it, any failure is retried until the outage has lasted [`RECONNECT_FOR`]. Each wait is
    /// twice the one before, up to [`RECONNECT_MAX_DELAY`].
    fn attempt_failed(
        &mut self,
        now: Instant,
        why: String,
        retry_first_join: bool,
        error: impl FnOnce() -> SessionError,
    ) {
        let first_join = self.welcome.is_none();
        if first_join && !retry_first_join {
            return self.fail(error());
        }
        let fresh = first_join && self.give_up_at.is_none();
        if fresh {
            self.give_up_at = Some(now + self.config.join_retry);
            self.next_delay = RECONNECT_FIRST_DELAY;
        }
        if self.give_up_at.is_none_or(|t| now >= t) {
            return self.fail(error());
        }
        if !fresh {
            self.next_delay = (self.next_delay * 2).min(RECONNECT_MAX_DELAY);
        }
        self.wait(now, why);
    }

    /// Waits [`Self::next_delay`] before the next attempt to connect.
    fn wait(&mut self, now: Instant, why: String) {
        let delay = self.next_delay;
        self.phase = Phase::Waiting;
        self.retry_at = Some(now + delay);
        if self.welcome.is_none() {
            warn!(
                coordinator = %self.config.coordinator,
                "cannot reach the coordinator ({why}); trying again in {delay:?}"
            );
        } else {
            warn!(
                coordinator = %self.config.coordinator,
                "connection to the coordinator lost ({why}); reconnecting in {delay:?}"
            );
        }
        self.events.push_back(Event::Reconnecting { why, delay });
    }

    fn close(&mut self, reason: &'static str) {
        self.events.push_back(Event::Close {
            code: CLOSE_OK,
            reason,
        });
    }

    fn fail(&mut self, error: SessionError) {
        self.end(Event::Failed(error));
    }

    fn end(&mut self, event: Event) {
        self.phase = Phase::Over;
        self.work.clear();
        self.events.push_back(event);
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
    rounds: BTreeSet<u32>,
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

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: u32 = 10;
    const CLASSES: u16 = 2;

    fn session(non_private: bool) -> NodeSession {
        session_retrying(non_private, Duration::ZERO)
    }

    fn session_retrying(non_private: bool, join_retry: Duration) -> NodeSession {
        NodeSession::new(SessionConfig {
            join_retry,
            secure: None,
            coordinator: SocketAddr::from(([127, 0, 0, 1], 4433)),
            hello: Hello {
                public_records: PUBLIC,
                classes: CLASSES,
                private_records: 40,
                public_sha256: None,
                private: false,
            },
            non_private,
        })
    }

    fn welcome(require_privacy: bool) -> Message {
        Message::Welcome(Welcome {
            node: "hospital-a".into(),
            federation: "test".into(),
            rounds: 3,
            require_privacy,
            planned_queries: 6,
        })
    }

    fn labels(ids: &[u32]) -> SoftLabels {
        SoftLabels {
            classes: CLASSES,
            query_ids: ids.to_vec(),
            probs: ids.iter().flat_map(|_| [0.75f32, 0.25]).collect(),
        }
    }

    fn open(round: u32, ids: &[u32], target: SoftLabels) -> Message {
        Message::RoundOpen(RoundOpen {
            round,
            rounds: 3,
            query_ids: ids.to_vec(),
            target,
            secure: None,
        })
    }

    fn empty() -> SoftLabels {
        labels(&[])
    }

    fn events(s: &mut NodeSession) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn transmits(s: &mut NodeSession) -> Vec<Message> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    /// Connects, says Hello and is welcomed at `now`.
    fn admit(s: &mut NodeSession, now: Instant) {
        assert!(matches!(events(s)[..], [Event::Connect]));
        s.handle_connected(now);
        let sent = transmits(s);
        assert!(matches!(sent[..], [Message::Hello(ref h)] if h.public_records == PUBLIC));
        s.handle(now, welcome(true));
        assert!(matches!(events(s)[..], [Event::Admitted(ref w)] if w.node == "hospital-a"));
        assert!(s.is_admitted());
    }

    /// Opens `round`, runs its work as a driver would, and returns what the node sent.
    fn play_round(s: &mut NodeSession, now: Instant, round: u32, ids: &[u32]) -> Vec<Message> {
        s.handle(now, open(round, ids, empty()));
        let work = s.poll_work().expect("a round asks for work");
        let Work::Round {
            open,
            planned_queries,
            secure: None,
        } = work
        else {
            panic!("expected round work, got {work:?}");
        };
        assert_eq!((open.round, planned_queries), (round, 6));
        assert!(s.poll_work().is_none(), "one piece of work per round");
        s.handle_work_done(
            now,
            Ok(WorkResult::Round {
                round,
                accuracy: 0.5 + f64::from(round) / 10.0,
                answer: Answer::Release(labels(ids), None),
            }),
        );
        transmits(s)
    }

    #[test]
    fn admission_then_a_round_sends_one_contribution() {
        let t0 = Instant::now();
        let mut s = session(false);
        admit(&mut s, t0);
        assert_eq!(s.node(), Some("hospital-a"));
        let sent = play_round(&mut s, t0, 0, &[1, 2]);
        match &sent[..] {
            [Message::Contribution(c)] => {
                assert_eq!(c.round, 0);
                assert_eq!(c.labels, labels(&[1, 2]));
            }
            other => panic!("expected one contribution, got {other:?}"),
        }
        assert_eq!(s.rounds_contributed(), 1);
        assert_eq!(s.round_accuracy(), [0.5]);
        assert!(s.poll_timeout().is_none() && !s.is_over());
    }

    #[test]
    fn a_refused_contribution_stops_counting_and_the_session_goes_on() {
        let t0 = Instant::now();
        let mut s = session(false);
        admit(&mut s, t0);
        play_round(&mut s, t0, 0, &[1]);
        play_round(&mut s, t0, 1, &[2]);
        s.handle(
            t0,
            Message::Refused {
                round: 0,
                reason: "late".into(),
            },
        );
        assert_eq!(s.rounds_contributed(), 1);
        assert!(!s.is_over() && events(&mut s).is_empty());
        // The next round is played as usual.
        assert_eq!(play_round(&mut s, t0, 2, &[3]).len(), 1);
        assert_eq!(s.rounds_contributed(), 2);
    }

    #[test]
    fn a_budget_spent_mid_run_sends_leave_and_nothing_else() {
        let t0 = Instant::now();
        let mut s = session(false);
        admit(&mut s, t0);
        play_round(&mut s, t0, 0, &[1]);
        s.handle(t0, open(1, &[2], labels(&[1])));
        assert!(s.poll_work().is_some());
        s.handle_work_done(
            t0,
            Ok(WorkResult::Round {
                round: 1,
                accuracy: 0.7,
                answer: Answer::BudgetSpent("epsilon 2 spent".into()),
            }),
        );
        let sent = transmits(&mut s);
        assert!(
            matches!(&sent[..], [Message::Leave { reason }] if reason.contains("epsilon 2 spent")),
            "{sent:?}"
        );
        let ev = events(&mut s);
        assert!(
            matches!(&ev[..], [Event::Close { code: CLOSE_OK, .. }, Event::Left(r)] if r == "epsilon 2 spent"),
            "{ev:?}"
        );
        assert!(s.is_over());
        assert_eq!(s.left(), Some("epsilon 2 spent"));
        assert_eq!(s.final_accuracy(), 0.7);
        // Whatever arrives afterwards is ignored: no work, no message.
        s.handle(t0, open(2, &[3], empty()));
        assert!(s.poll_work().is_none() && s.poll_transmit().is_none());
        assert_eq!(s.rounds_contributed(), 1);
    }

    #[test]
    fn a_lost_connection_backs_off_doubling_and_resumes() {
        let t0 = Instant::now();
        let mut s = session(false);
        admit(&mut s, t0);
        play_round(&mut s, t0, 0, &[1]);
        s.handle_connection_lost(t0, "reset".into());
        assert!(!s.is_admitted());
        assert!(matches!(
            events(&mut s)[..],
            [Event::Reconnecting { delay, .. }] if delay == RECONNECT_FIRST_DELAY
        ));
        assert_eq!(s.poll_timeout(), Some(t0 + RECONNECT_FIRST_DELAY));
        // Too early: nothing happens.
        s.handle_timeout(t0 + RECONNECT_FIRST_DELAY / 2);
        assert!(events(&mut s).is_empty());
        let t1 = t0 + RECONNECT_FIRST_DELAY;
        s.handle_timeout(t1);
        assert!(matches!(events(&mut s)[..], [Event::Connect]));
        assert!(s.poll_timeout().is_none());
        // The coordinator is still down: the next wait is twice as long.
        s.handle_connect_failed(t1, "refused".into());
        assert!(matches!(
            events(&mut s)[..],
            [Event::Reconnecting { delay, .. }] if delay == 2 * RECONNECT_FIRST_DELAY
        ));
        let t2 = t1 + 2 * RECONNECT_FIRST_DELAY;
        assert_eq!(s.poll_timeout(), Some(t2));
        s.handle_timeout(t2);
        admit(&mut s, t2);
        // Resumed: the next round is played and counted.
        assert_eq!(play_round(&mut s, t2, 1, &[2]).len(), 1);
        assert_eq!(s.rounds_contributed(), 2);
    }

    #[test]
    fn back_off_is_capped_and_gives_up_after_reconnect_for() {
        let t0 = Instant::now();
        let mut s = session(false);
        admit(&mut s, t0);
        s.handle_connection_lost(t0, "reset".into());
        let mut now = t0;
        let mut delays = Vec::new();
        loop {
            let mut ended = None;
            for e in events(&mut s) {
                match e {
                    Event::Reconnecting { delay, .. } => delays.push(delay),
                    Event::Connect => {}
                    Event::Failed(err) => ended = Some(err),
                    other => panic!("unexpected {other:?}"),
                }
            }
            if let Some(err) = ended {
                assert!(matches!(err, SessionError::Connect { .. }), "{err}");
                break;
            }
            now = s.poll_timeout().expect("waiting to retry");
            s.handle_timeout(now);
            assert!(matches!(events(&mut s)[..], [Event::Connect]));
            s.handle_connect_failed(now, "refused".into());
        }
        assert!(s.is_over());
        assert!(
            now >= t0 + RECONNECT_FOR - RECONNECT_MAX_DELAY,
            "gave up too early"
        );
        assert!(
            now < t0 + RECONNECT_FOR + RECONNECT_MAX_DELAY,
            "gave up too late"
        );
        assert_eq!(
            delays[..4],
            [200, 400, 800, 1600].map(Duration::from_millis)
        );
        assert!(delays.iter().all(|&d| d <= RECONNECT_MAX_DELAY));
        assert_eq!(delays.last(), Some(&RECONNECT_MAX_DELAY));
    }

    #[test]
    fn a_round_asked_again_is_resent_without_new_work() {
        let t0 = Instant::now();
        let mut s = session(false);
        admit(&mut s, t0);
        let first = play_round(&mut s, t0, 0, &[1, 2]);
        s.handle_connection_lost(t0, "reset".into());
        let _ = events(&mut s);
        let t1 = s.poll_timeout().expect("retry");
        s.handle_timeout(t1);
        admit(&mut s, t1);
        // The restarted coordinator asks for round 0 again.
        s.handle(t1, open(0, &[1, 2], empty()));
        assert!(s.poll_work().is_none(), "no new training or release");
        assert_eq!(transmits(&mut s), first, "the same contribution again");
        assert_eq!(s.rounds_contributed(), 1);
        // A different question for the same round is new work.
        s.handle(t1, open(0, &[3], empty()));
        assert!(s.poll_work().is_some());
    }

    #[test]
    fn finished_distils_then_closes() {
        let t0 = Instant::now();
        let mut s = session(false);
        admit(&mut s, t0);
        play_round(&mut s, t0, 0, &[1]);
        s.handle(
            t0,
            Message::Finished {
                rounds: 3,
                target: labels(&[1]),
            },
        );
        let work = s.poll_work();
        assert!(
            matches!(&work, Some(Work::Distil { rounds: 3, target }) if *target == labels(&[1])),
            "{work:?}"
        );
        s.handle_work_done(t0, Ok(WorkResult::Distilled { accuracy: 0.9 }));
        assert!(s.poll_transmit().is_none());
        let ev = events(&mut s);
        assert!(
            matches!(
                &ev[..],
                [
                    Event::Close {
                        code: CLOSE_OK,
                        reason: "done"
                    },
                    Event::Finished
                ]
            ),
            "{ev:?}"
        );
        assert!(s.is_over());
        assert_eq!(s.final_accuracy(), 0.9);
        assert_eq!(s.round_accuracy(), [0.5]);
        assert_eq!(s.left(), None);
    }

    #[test]
    fn a_node_that_vanishes_does_not_count_the_round_it_dropped() {
        let t0 = Instant::now();
        let mut s = session(false);
        admit(&mut s, t0);
        play_round(&mut s, t0, 0, &[1]);
        play_round(&mut s, t0, 1, &[2]);
        assert_eq!(s.rounds_contributed(), 2);
        // The driver polled round 1's contribution and dropped the connection instead.
        s.handle_abandon("vanished in round 1 (simulated)".into(), Some(1));
        assert!(matches!(&events(&mut s)[..], [Event::Left(r)] if r.contains("vanished")));
        assert_eq!(s.rounds_contributed(), 1);
        assert!(s.is_over() && s.poll_transmit().is_none());
    }

    #[test]
    fn without_join_retry_the_first_join_is_not_retried() {
        let t0 = Instant::now();
        let mut s = session(false);
        let _ = events(&mut s);
        s.handle_connect_failed(t0, "no route".into());
        assert!(matches!(
            events(&mut s)[..],
            [Event::Failed(SessionError::Connect { .. })]
        ));
    }

    #[test]
    fn the_first_join_retries_an_unreachable_coordinator_for_join_retry() {
        let t0 = Instant::now();
        let retry = Duration::from_secs(3);
        let mut s = session_retrying(false, retry);
        let _ = events(&mut s);
        let mut now = t0;
        let mut delays = Vec::new();
        loop {
            s.handle_connect_failed(now, "handshake timed out".into());
            match &events(&mut s)[..] {
                [Event::Reconnecting { delay, .. }] => delays.push(*delay),
                [Event::Failed(SessionError::Connect { .. })] => break,
                other => panic!("unexpected {other:?}"),
            }
            now = s.poll_timeout().expect("waiting to retry");
            s.handle_timeout(now);
            assert!(matches!(events(&mut s)[..], [Event::Connect]));
        }
        assert!(s.is_over());
        // 200 + 400 + 800 + 1600 ms = 3 s: the attempt at 3 s is the first past the window.
        assert_eq!(delays, [200, 400, 800, 1600].map(Duration::from_millis));
        assert_eq!(now, t0 + retry);

        // The coordinator comes up in time: the node is admitted and plays as usual.
        let mut s = session_retrying(false, retry);
        let _ = events(&mut s);
        s.handle_connect_failed(t0, "refused".into());
        let _ = events(&mut s);
        let t1 = s.poll_timeout().expect("retry");
        s.handle_timeout(t1);
        admit(&mut s, t1);
        assert_eq!(play_round(&mut s, t1, 0, &[1]).len(), 1);
    }

    #[test]
    fn a_refusal_before_the_first_welcome_is_final_even_with_join_retry() {
        // A connection closed before Welcome is a refusal to admit (e.g. a foreign CA).
        let t0 = Instant::now();
        let mut s = session_retrying(false, Duration::from_secs(60));
        let _ = events(&mut s);
        s.handle_connected(t0);
        let _ = transmits(&mut s);
        s.handle_connection_lost(t0, "closed".into());
        assert!(matches!(
            events(&mut s)[..],
            [Event::Failed(SessionError::NotAdmitted { .. })]
        ));
    }

    #[test]
    fn a_non_private_node_leaves_a_federation_that_requires_privacy() {
        let t0 = Instant::now();
        let mut s = session(true);
        let _ = events(&mut s);
        s.handle_connected(t0);
        let _ = transmits(&mut s);
        s.handle(t0, welcome(true));
        assert!(matches!(transmits(&mut s)[..], [Message::Leave { .. }]));
        assert!(matches!(
            events(&mut s)[..],
            [
                Event::Close {
                    reason: "terms",
                    ..
                },
                Event::Failed(SessionError::Terms(_))
            ]
        ));
    }

    #[test]
    fn out_of_range_queries_and_bad_targets_are_protocol_violations() {
        let t0 = Instant::now();
        let mut s = session(false);
        admit(&mut s, t0);
        s.handle(t0, open(0, &[PUBLIC], empty()));
        assert!(s.poll_work().is_none());
        assert!(matches!(
            events(&mut s)[..],
            [Event::Failed(SessionError::Protocol(ref m))] if m.contains("public record 10")
        ));
        // A target with the wrong number of classes.
        let mut s = session(false);
        admit(&mut s, t0);
        let bad = SoftLabels {
            classes: 3,
            query_ids: vec![1],
            probs: vec![0.2, 0.3, 0.5],
        };
        s.handle(t0, open(0, &[1], bad));
        assert!(matches!(
            events(&mut s)[..],
            [Event::Failed(SessionError::Protocol(_))]
        ));
    }
}
