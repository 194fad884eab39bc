//! The driver of a node's session: the only part of the node that does I/O.
//!
//! It opens the QUIC connection, writes what the [`NodeSession`] polls out, reads what the
//! coordinator sends and feeds it in, runs [`Work`] on a blocking thread (candle work is
//! CPU-bound and must not stall the async runtime), sleeps until the session's timeouts, and
//! applies the simulator's [`ContributionHook`] to each contribution on its way out. Every
//! decision is the session's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fd_protocol::{Hello, Message, close};
use fd_transport::tls::TlsIdentity;
use fd_transport::{self as transport, TransportError};
use tracing::{info, warn};

use crate::data::Labelled;
use crate::distill::Learner;
use crate::federation::error::SessionError;
use crate::federation::hooks::{ContributionHook, Outgoing};
use crate::federation::secure::SecureIdentity;
use crate::federation::session::{
    CLOSE_VANISHED, Event, NodeSession, SessionConfig, Work, WorkResult,
};
use crate::privacy::release::Labeller;

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
    /// How long the first join retries an unreachable coordinator.
    pub join_retry: Duration,
    /// SHA-256 of the public CSV file, sent in Hello (see [`Hello::public_sha256`]).
    pub public_sha256: Option<[u8; 32]>,
    /// What secure-aggregation rounds need (private nodes); `None`: the node leaves a
    /// federation that runs them.
    pub secure: Option<SecureIdentity>,
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

/// How long closing waits for the coordinator to read the last of our stream, so that closing
/// the connection right after cannot drop our last message.
const FINISH_WAIT: Duration = Duration::from_secs(10);

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
    learner: Learner,
    labeller: Labeller,
    hook: Option<Box<dyn ContributionHook>>,
) -> Result<SessionOutcome, SessionError> {
    let started = Instant::now();
    let endpoint = transport::client_endpoint(fd_transport::tls::client_config(&plan.tls)?)?;
    let session = NodeSession::new(SessionConfig {
        coordinator: plan.coordinator,
        hello: Hello {
            public_records: learner.public_records() as u32,
            classes: learner.student().config().classes as u16,
            private_records: plan.private_records,
            public_sha256: plan.public_sha256,
            private: !matches!(labeller, Labeller::Student),
        },
        non_private: matches!(labeller, Labeller::Student),
        join_retry: plan.join_retry,
        secure: plan.secure.clone(),
    });
    let mut driver = Driver {
        endpoint,
        plan,
        session,
        link: None,
        worker: Some(Worker { learner, labeller }),
        hook,
        bytes_up: 0,
        bytes_down: 0,
    };
    let ending = driver.run().await;
    let Driver {
        session,
        worker,
        bytes_up,
        bytes_down,
        ..
    } = driver;
    ending?;
    let worker = worker.ok_or_else(|| SessionError::Worker("the learner was lost".into()))?;
    Ok(SessionOutcome {
        node: session.node().unwrap_or_default().to_owned(),
        rounds: session.rounds_contributed(),
        round_accuracy: session.round_accuracy().to_vec(),
        final_accuracy: session.final_accuracy(),
        bytes_up,
        bytes_down,
        seconds: started.elapsed().as_secs_f64(),
        learner: worker.learner,
        labeller: worker.labeller,
        left: session.left().map(str::to_owned),
    })
}

/// What the session's [`Work`] runs on: moved to a blocking thread and back.
struct Worker {
    learner: Learner,
    labeller: Labeller,
}

impl Worker {
    /// Runs one piece of work, exactly as a round or the final distillation needs it.
    fn run(&mut self, work: Work, holdout: &Labelled) -> Result<WorkResult, SessionError> {
        let Worker { learner, labeller } = self;
        match work {
            Work::Round {
                open,
                planned_queries,
                secure,
            } => {
                let alpha = learner.config().alpha(open.round, open.rounds);
                learner.set_round(open.round, open.rounds)?;
                learner.set_target(&labeller.student_target(&open.target))?;
                let steps = if open.target.is_empty() {
                    learner.config().local_steps
                } else {
                    learner.config().steps_per_round
                };
                learner.train(steps, alpha)?;
                let accuracy = learner.accuracy(holdout)?;
                let answer = match secure {
                    Some(terms) => labeller.label_secure_round(
                        learner,
                        open.round,
                        open.rounds,
                        &open.query_ids,
                        planned_queries,
                        terms,
                    )?,
                    None => labeller.label_round(
                        learner,
                        open.round,
                        open.rounds,
                        &open.query_ids,
                        planned_queries,
                    )?,
                };
                let temperature = learner.temperature();
                let epsilon_spent = labeller.spent().ok().flatten().map(|(e, _)| e);
                info!(
                    round = open.round,
                    alpha,
                    temperature,
                    accuracy,
                    epsilon_spent,
                    "round {} of {}: trained and labelled",
                    open.round + 1,
                    open.rounds
                );
                fd_cli::logging::round_progress(
                    open.round + 1,
                    open.rounds,
                    match epsilon_spent {
                        Some(e) => format!("held-out accuracy {accuracy:.3}, epsilon {e:.3}"),
                        None => format!("held-out accuracy {accuracy:.3}"),
                    },
                );
                Ok(WorkResult::Round {
                    round: open.round,
                    accuracy,
                    answer,
                })
            }
            Work::Distil { rounds, target } => {
                let alpha = learner.config().alpha_end;
                learner.set_round(rounds, rounds)?;
                learner.set_target(&labeller.student_target(&target))?;
                let steps = learner
                    .config()
                    .final_steps
                    .unwrap_or(learner.config().steps_per_round);
                learner.train(steps, alpha)?;
                learner.finish_average()?;
                if let Some(p) = labeller.private()
                    && let Some(plan) = &p.plan
                {
                    let (snr, trust_snr) = (plan.snr, p.trust_snr);
                    let verdict = learner.weigh_target(snr, trust_snr)?;
                    if verdict.kept == "local-only" {
                        tracing::warn!(
                            snr,
                            trust_snr,
                            "do no harm: the planner predicts this node's vote sums to be mostly \
                             noise, so the federation's target is unlikely to help; keeping the \
                             local-only student (privacy.trust_snr sets the threshold)"
                        );
                    }
                }
                if let Some(check) = learner.check_harm()? {
                    let local = check.kept == "local-only";
                    let message = if local {
                        "do no harm: cross-validation did not show the federated student better \
                         (on the target's held-out rows) and no worse (on held-out private \
                         records) than one trained alone; keeping the local-only student"
                    } else {
                        "do no harm: cross-validation showed the federated student better than \
                         one trained alone on the target's held-out rows and no worse on \
                         held-out private records; keeping it"
                    };
                    macro_rules! report_check {
                        ($level:ident) => {
                            tracing::$level!(
                                kept = %check.kept,
                                target_z = check.target_z,
                                private_z = check.z,
                                federated = check.federated_validation_acc,
                                local_only = check.local_only_validation_acc,
                                validation_records = check.validation_records,
                                target_rows = check.target_rows,
                                "{message}"
                            )
                        };
                    }
                    if local {
                        report_check!(warn);
                    } else {
                        report_check!(info);
                    }
                }
                Ok(WorkResult::Distilled {
                    accuracy: learner.accuracy(holdout)?,
                })
            }
        }
    }
}

/// One connection to the coordinator.
struct Link {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// The session, the I/O it needs, and the byte counters.
struct Driver {
    endpoint: quinn::Endpoint,
    plan: SessionPlan,
    session: NodeSession,
    link: Option<Link>,
    /// `None` only while its work runs on the blocking thread.
    worker: Option<Worker>,
    hook: Option<Box<dyn ContributionHook>>,
    bytes_up: u64,
    bytes_down: u64,
}

impl Driver {
    /// Feeds and polls the session until it ends, in the order [`NodeSession`] states: after
    /// every step (a message written, an event acted on, work run, a timeout) it starts over
    /// from the messages, so nothing the step queued waits behind a blocking read.
    async fn run(&mut self) -> Result<(), SessionError> {
        loop {
            if let Some(message) = self.session.poll_transmit() {
                self.transmit(message).await?;
            } else if let Some(event) = self.session.poll_event() {
                if let Some(ending) = self.on_event(event).await {
                    return ending;
                }
            } else if let Some(work) = self.session.poll_work() {
                let result = self.work(work).await;
                self.session.handle_work_done(Instant::now(), result);
            } else if let Some(at) = self.session.poll_timeout() {
                tokio::time::sleep_until(at.into()).await;
                self.session.handle_timeout(Instant::now());
            } else {
                self.receive().await?;
            }
        }
    }

    /// Acts on one event; `Some` when the session is over.
    async fn on_event(&mut self, event: Event) -> Option<Result<(), SessionError>> {
        match event {
            Event::Connect => {
                info!(coordinator = %self.plan.coordinator, "connecting to the coordinator");
                let now = Instant::now();
                match connect(&self.endpoint, &self.plan).await {
                    Ok(connection) => {
                        self.session.handle_connected(now);
                        // With TLS 1.3 the handshake completes on our side before the
                        // coordinator has checked our certificate: the session counts the node
                        // admitted only once Welcome arrives, and a failure from here on is a
                        // refusal to admit.
                        match connection.open_bi().await {
                            Ok((send, recv)) => {
                                self.link = Some(Link {
                                    connection,
                                    send,
                                    recv,
                                })
                            }
                            Err(e) => self.session.handle_connection_lost(now, e.to_string()),
                        }
                    }
                    Err(why) => self.session.handle_connect_failed(now, why),
                }
            }
            Event::Admitted(welcome) => info!(
                node = %welcome.node,
                privacy = %self.worker.as_ref().map(|w| w.labeller.statement()).unwrap_or_default(),
                federation = %welcome.federation,
                rounds = welcome.rounds,
                planned_queries = welcome.planned_queries,
                "admitted"
            ),
            Event::Reconnecting { .. } => self.link = None,
            Event::Close { code, reason } => {
                if let Some(mut link) = self.link.take() {
                    if link.send.finish().is_ok() {
                        let _ = tokio::time::timeout(FINISH_WAIT, link.send.stopped()).await;
                    }
                    link.connection.close(code.into(), reason.as_bytes());
                    self.endpoint.wait_idle().await;
                }
            }
            Event::Finished | Event::Left(_) => return Some(Ok(())),
            Event::Failed(e) => return Some(Err(e)),
        }
        None
    }

    /// Writes one message, through the simulator's hook if it is a contribution (or, in a
    /// secure round, the masked vector: the hook may delay it or vanish instead of sending it,
    /// a dropout after masking; there are no labels in it to corrupt).
    async fn transmit(&mut self, mut message: Message) -> Result<(), SessionError> {
        let mut masked_labels = fd_protocol::SoftLabels::default();
        let outgoing = match (&mut message, self.hook.as_mut()) {
            (Message::Contribution(c), Some(hook)) => {
                Some((c.round, hook.outgoing(c.round, &mut c.labels)))
            }
            (Message::Masked(m), Some(hook)) => {
                Some((m.round, hook.outgoing(m.round, &mut masked_labels)))
            }
            _ => None,
        };
        if let Some((round, outgoing)) = outgoing {
            match outgoing {
                Outgoing::Send => {}
                Outgoing::Delay(d) => tokio::time::sleep(d).await,
                Outgoing::Vanish => {
                    warn!(round, "vanishing mid-round (simulated failure)");
                    if let Some(link) = self.link.take() {
                        link.connection.close(CLOSE_VANISHED.into(), b"vanished");
                    }
                    let why = format!("vanished in round {round} (simulated)");
                    self.session.handle_abandon(why, Some(round));
                    return Ok(());
                }
            }
        }
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        match transport::write_message(&mut link.send, &message, self.plan.max_frame_len).await {
            Ok(n) => self.bytes_up += n as u64,
            // Before Welcome, any failure means the coordinator did not admit us.
            Err(e) if connection_lost(&e) || !self.session.is_admitted() => {
                self.session
                    .handle_connection_lost(Instant::now(), e.to_string());
            }
            Err(e) => return Err(failure(e)),
        }
        Ok(())
    }

    /// Reads the next message and feeds it to the session.
    async fn receive(&mut self) -> Result<(), SessionError> {
        let Some(link) = self.link.as_mut() else {
            // Nothing to read and nothing to do: a session that is not over always has a
            // connection, work, or a timeout.
            return Err(SessionError::Worker(
                "the session is idle with no connection".into(),
            ));
        };
        let now = Instant::now();
        match transport::read_message(&mut link.recv, self.plan.max_frame_len).await {
            Ok(Some((message, n))) => {
                self.bytes_down += n as u64;
                self.session.handle(now, message);
            }
            Ok(None) => self.session.handle_connection_lost(
                now,
                "the coordinator closed the stream before Finished".into(),
            ),
            Err(e) if connection_lost(&e) || !self.session.is_admitted() => {
                self.session.handle_connection_lost(now, e.to_string())
            }
            Err(e) => return Err(failure(e)),
        }
        Ok(())
    }

    /// Runs `work` on a blocking thread with the learner and labeller moved there and back.
    async fn work(&mut self, work: Work) -> Result<WorkResult, SessionError> {
        let mut worker = self
            .worker
            .take()
            .ok_or_else(|| SessionError::Worker("work asked for while work runs".into()))?;
        let holdout = self.plan.holdout.clone();
        let (worker, result) = tokio::task::spawn_blocking(move || {
            let result = worker.run(work, &holdout);
            (worker, result)
        })
        .await
        .map_err(|e| SessionError::Worker(e.to_string()))?;
        self.worker = Some(worker);
        result
    }
}

/// Connects (QUIC and TLS handshake); `Err` says why not, in words.
async fn connect(
    endpoint: &quinn::Endpoint,
    plan: &SessionPlan,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect(plan.coordinator, &plan.server_name)
        .map_err(|e| e.to_string())?;
    connecting.await.map_err(|e| e.to_string())
}

/// The coordinator's close, if `e` is the coordinator having closed the connection on purpose.
fn coordinator_close(e: &TransportError) -> Option<&quinn::ApplicationClose> {
    use quinn::{ConnectionError, ReadError, WriteError};
    match e {
        TransportError::Read(ReadError::ConnectionLost(ConnectionError::ApplicationClosed(a)))
        | TransportError::Write(WriteError::ConnectionLost(ConnectionError::ApplicationClosed(
            a,
        )))
        | TransportError::Connection(ConnectionError::ApplicationClosed(a)) => Some(a),
        _ => None,
    }
}

/// The session error for a transport failure reconnecting cannot cure.
fn failure(e: TransportError) -> SessionError {
    match coordinator_close(&e) {
        Some(a) if a.error_code.into_inner() == u64::from(close::REPLACED) => {
            SessionError::Replaced(String::from_utf8_lossy(&a.reason).into_owned())
        }
        _ => e.into(),
    }
}

/// Whether a transport error means the connection is gone (worth reconnecting: a crash, a
/// reset, a network outage, or a close the coordinator says it will take back, such as its
/// shutdown), rather than closed on purpose by the coordinator or the coordinator sending
/// something unreadable (which reconnecting would not cure).
fn connection_lost(e: &TransportError) -> bool {
    use quinn::{ConnectionError, ReadError, WriteError};
    if let Some(a) = coordinator_close(e) {
        return close::reconnect_helps(a.error_code.into_inner());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn closed_with(code: u32, reason: &'static str) -> TransportError {
        TransportError::Read(quinn::ReadError::ConnectionLost(
            quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: code.into(),
                reason: bytes::Bytes::from_static(reason.as_bytes()),
            }),
        ))
    }

    #[test]
    fn a_coordinator_shutdown_or_a_too_slow_close_is_worth_a_reconnect() {
        for code in [close::SHUTDOWN, close::TOO_SLOW] {
            assert!(connection_lost(&closed_with(code, "")), "{code}");
        }
        for code in [close::DONE, close::REFUSED, close::REPLACED] {
            assert!(!connection_lost(&closed_with(code, "")), "{code}");
        }
    }

    #[test]
    fn a_replaced_connection_ends_the_session_saying_why() {
        let e = failure(closed_with(
            close::REPLACED,
            "replaced by a newer connection",
        ));
        let SessionError::Replaced(reason) = &e else {
            panic!("expected Replaced, got {e:?}");
        };
        assert_eq!(reason, "replaced by a newer connection");
        assert!(e.to_string().contains("certificate"), "{e}");
        // Any other close stays a transport error.
        let other = failure(closed_with(close::REFUSED, "refused"));
        assert!(matches!(other, SessionError::Transport(_)), "{other:?}");
    }
}
