//! Operator controls: kicks and bans committed in group 0 and pushed to every gateway, the
//! gateways' figures (`cluster stats`) and where a user is connected (`cluster connections`).
//! The admin API (`admin.rs`) authorizes; everything here returns a typed [`OperatorError`].
//!
//! ```text
//!   Kick / AddBan / RemoveBan ─▶ validate ─▶ proposer of group 0 ─▶ committed
//!        (any manager)             │ not the leader: forwarded once to it (manager cert)
//!                                  ▼
//!   every manager: control task polls group 0's versions (CONTROL_TICK)
//!        bans_version changed ─▶ BanFrames (encoded once) ─▶ watch ─▶ each session's writer
//!        last_kick grew      ─▶ Kick frames ─▶ every live session's queue
//!   session opens ─▶ the current BanFrames and the kicks of the last RECENT_KICKS
//!
//!   Stats       ─▶ StatsBook (heartbeats of gateways with a session here), CommitRates
//!   Connections ─▶ ConnectionsQuery on every live session ─▶ answers for up to QUERY_WAIT
//! ```
//!
//! Why every manager pushes, not only group 0's leader: a gateway cut off from the leader
//! still learns a ban from any manager it reaches, and nothing has to change hands on a
//! leader change. Gateways keep the newest ban list by version and act on a kick's `seq` once.
//! The times in a ban or kick come from the wall clock of the manager that took the
//! operator's call (written into the entry, so every replica applies the same thing).

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use firetower_proto::admin::{
    add_ban_request, AddBanReply, AddBanRequest, ConnectionsReply, ConnectionsRequest,
    GatewayFigures as PbGatewayFigures, GroupFigures, HistoryRuleEntry, KickReply, KickRequest,
    ListBansReply, ListBansRequest, ListRulesReply, ListRulesRequest, RemoveBanReply,
    RemoveBanRequest, SetRuleReply, SetRuleRequest, StatsReply, UserConnection,
};
use firetower_proto::link::{session_frame, ConnectionsQuery};
use firetower_proto::{Ban, BanTarget, Cidr, GatewayId};
use firetower_raft::{Command, GroupId, Response};
use firetower_store::{MAX_HISTORY_SIZE, MAX_HISTORY_TTL_MS};
use openraft::error::{CheckIsLeaderError, RaftError};
use tonic::{Code, Status};

use crate::controls::{kick_frame, BanFrames};
use crate::node::Node;
use crate::proposer::ProposeError;

/// The gRPC metadata key a manager sets on a call it forwards to group 0's leader: a
/// forwarded call is not forwarded again.
pub(crate) const FORWARDED: &str = "firetower-forwarded";
/// How often every manager looks at group 0 for ban changes and kicks.
const CONTROL_TICK: Duration = Duration::from_millis(100);
/// How often the applied indexes are sampled for commit rates.
const COMMIT_SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Kicks this recent are sent to a gateway whose session opens (it may have been away when
/// they were pushed).
const RECENT_KICKS: Duration = Duration::from_secs(60);
/// The longest reason kept with a ban.
pub(crate) const MAX_REASON_BYTES: usize = 256;
/// The longest TTL: ten years (in practice "until removed" is a TTL of 0).
pub(crate) const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long `Connections` waits for the gateways' answers.
pub(crate) const QUERY_WAIT: Duration = Duration::from_secs(1);
/// How long a call forwarded to group 0's leader may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an operator control did not happen. Every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OperatorError {
    /// Bad input: nothing was committed.
    #[error("{0}")]
    InvalidRequest(String),
    /// No such ban.
    #[error("{0}")]
    NotFound(String),
    /// The cluster's state does not allow it (not joined, the ban list is full).
    #[error("{0}")]
    Refused(String),
    /// No leader of group 0 or no quorum right now: retry.
    #[error("{0}")]
    Unavailable(String),
    /// No commit in time: the change may or may not take effect.
    #[error("{0}")]
    TimedOut(String),
    /// Too many queries at once.
    #[error("{0}")]
    Busy(String),
    /// The leader, called on the way, answered with this status (passed on as it is).
    #[error("{}", .0.message())]
    Remote(Status),
}

impl From<OperatorError> for Status {
    fn from(e: OperatorError) -> Self {
        let code = match &e {
            OperatorError::InvalidRequest(_) => Code::InvalidArgument,
            OperatorError::NotFound(_) => Code::NotFound,
            OperatorError::Refused(_) => Code::FailedPrecondition,
            OperatorError::Unavailable(_) => Code::Unavailable,
            OperatorError::TimedOut(_) => Code::DeadlineExceeded,
            OperatorError::Busy(_) => Code::ResourceExhausted,
            OperatorError::Remote(status) => return status.clone(),
        };
        Status::new(code, e.to_string())
    }
}

impl From<Status> for OperatorError {
    fn from(status: Status) -> Self {
        OperatorError::Remote(status)
    }
}

/// Where group 0's leader is, for a read.
enum Confirmed {
    /// Here: this copy reflects everything committed before the call.
    Here(firetower_store::TableReader),
    /// At this admin address.
    Forward(String),
}

/// Where a proposal went.
enum Outcome {
    /// Committed and applied here: the response and the log index.
    Committed(Response, u64),
    /// Another manager leads group 0: the call goes to its admin address.
    Forward(String),
}

/// The operator controls of one manager.
#[derive(Debug, Clone)]
pub(crate) struct Operators {
    node: Node,
}

impl Operators {
    pub(crate) fn new(node: Node) -> Self {
        Operators { node }
    }

    /// `cluster kick --user U`.
    pub(crate) async fn kick(
        &self,
        request: KickRequest,
        forwarded: bool,
    ) -> Result<KickReply, OperatorError> {
        let user = checked_user(&request.user)?;
        // The time is the receiving manager's; only a forwarding manager passes its own on.
        let at_ms = if forwarded && request.at_ms != 0 {
            request.at_ms
        } else {
            unix_ms()
        };
        let command = Command::Kick {
            user: user.clone(),
            at_ms,
        };
        match self.commit(command, forwarded).await? {
            Outcome::Committed(_, index) => {
                tracing::info!(event = "operator_kick", user = %user.escape_debug(), at_ms, index, "kick committed");
                Ok(KickReply { at_ms, index })
            }
            Outcome::Forward(admin) => {
                let mut client = self.leader_client(&admin).await?;
                let reply = client.kick(forward(KickRequest { user, at_ms })).await?;
                Ok(reply.into_inner())
            }
        }
    }

    /// `cluster ban add`.
    pub(crate) async fn add_ban(
        &self,
        request: AddBanRequest,
        forwarded: bool,
    ) -> Result<AddBanReply, OperatorError> {
        let target = match &request.target {
            None => {
                return Err(OperatorError::InvalidRequest(
                    "a ban needs a target: a user, an IP range or a topic pattern".into(),
                ))
            }
            Some(add_ban_request::Target::User(u)) => BanTarget::User(u.clone()),
            Some(add_ban_request::Target::Ip(ip)) => BanTarget::Ip(
                Cidr::parse(ip).map_err(|e| OperatorError::InvalidRequest(e.to_string()))?,
            ),
            Some(add_ban_request::Target::Topic(t)) => BanTarget::Topic(t.clone()),
        };
        target
            .validate()
            .map_err(|e| OperatorError::InvalidRequest(e.to_string()))?;
        if request.reason.len() > MAX_REASON_BYTES {
            return Err(OperatorError::InvalidRequest(format!(
                "the reason is {} bytes long; the limit is {MAX_REASON_BYTES}",
                request.reason.len()
            )));
        }
        if request.reason.chars().any(char::is_control) {
            return Err(OperatorError::InvalidRequest(
                "the reason may not contain control characters".into(),
            ));
        }
        if request.ttl_ms > MAX_TTL.as_millis() as u64 {
            return Err(OperatorError::InvalidRequest(format!(
                "a TTL of {} ms is longer than the limit of ten years; give no TTL for a ban \
                 that stays until removed",
                request.ttl_ms
            )));
        }
        let created_ms = if forwarded && request.created_ms != 0 {
            request.created_ms
        } else {
            unix_ms()
        };
        let ban = Ban {
            id: 0,
            target,
            reason: request.reason.clone(),
            created_ms,
            expires_ms: (request.ttl_ms > 0).then(|| created_ms.saturating_add(request.ttl_ms)),
        };
        match self
            .commit(Command::AddBan { ban: ban.clone() }, forwarded)
            .await?
        {
            Outcome::Committed(Response::BanAdded { id }, index) => {
                let ban = Ban { id, ..ban };
                tracing::info!(event = "operator_ban_added", id, index, target = ?ban.target, "ban committed");
                Ok(AddBanReply {
                    ban: serde_json::to_string(&ban).unwrap_or_default(),
                    id,
                })
            }
            Outcome::Committed(Response::Refused { reason }, _) => {
                Err(OperatorError::Refused(reason))
            }
            Outcome::Committed(other, _) => Err(OperatorError::Unavailable(format!(
                "group 0 answered {other:?} to a ban; is every manager of the same version?"
            ))),
            Outcome::Forward(admin) => {
                let mut client = self.leader_client(&admin).await?;
                let reply = client
                    .add_ban(forward(AddBanRequest {
                        created_ms,
                        ..request
                    }))
                    .await?;
                Ok(reply.into_inner())
            }
        }
    }

    /// `cluster ban remove ID`.
    pub(crate) async fn remove_ban(
        &self,
        request: RemoveBanRequest,
        forwarded: bool,
    ) -> Result<RemoveBanReply, OperatorError> {
        if request.id == 0 {
            return Err(OperatorError::InvalidRequest(
                "ban ids start at 1 (see `cluster ban list`)".into(),
            ));
        }
        match self
            .commit(Command::RemoveBan { id: request.id }, forwarded)
            .await?
        {
            Outcome::Committed(Response::Refused { reason }, _) => {
                Err(OperatorError::NotFound(reason))
            }
            Outcome::Committed(_, index) => {
                tracing::info!(
                    event = "operator_ban_removed",
                    id = request.id,
                    index,
                    "ban removed"
                );
                Ok(RemoveBanReply {})
            }
            Outcome::Forward(admin) => {
                let mut client = self.leader_client(&admin).await?;
                Ok(client.remove_ban(forward(request)).await?.into_inner())
            }
        }
    }

    /// `cluster ban list`: read at group 0's leader (read index), so that a ban just added
    /// through any manager is in it.
    pub(crate) async fn list_bans(
        &self,
        request: ListBansRequest,
        forwarded: bool,
    ) -> Result<ListBansReply, OperatorError> {
        let reader = match self.confirm_group0(forwarded).await? {
            Confirmed::Here(reader) => reader,
            Confirmed::Forward(admin) => {
                let mut client = self.leader_client(&admin).await?;
                return Ok(client.list_bans(forward(request)).await?.into_inner());
            }
        };
        let controls = reader
            .controls()
            .map_err(|e| OperatorError::Unavailable(format!("reading group 0: {e}")))?;
        let now = unix_ms();
        let bans = controls
            .bans
            .iter()
            .filter(|b| request.include_lapsed || b.is_active(now))
            .filter_map(|b| serde_json::to_string(b).ok())
            .collect();
        Ok(ListBansReply {
            bans,
            version: controls.bans_version,
        })
    }

    /// `cluster stats`: what this manager knows, from the heartbeats of every gateway with a
    /// session here (every gateway keeps one with every manager) and its own groups.
    pub(crate) async fn stats(&self) -> Result<StatsReply, OperatorError> {
        self.require_joined()?;
        let live: HashSet<GatewayId> = self
            .node
            .sessions()
            .live()
            .iter()
            .map(|h| h.gateway)
            .collect();
        let figures = self.node.stats_book().figures();
        let gateways = figures
            .into_iter()
            .filter(|(g, _)| live.contains(g))
            .map(|(g, f)| PbGatewayFigures {
                id: g.get(),
                connections: f.connections,
                subscriptions: f.subscriptions,
                topics: f.topics,
                messages_in_per_s: f.messages_in_per_s,
                messages_out_per_s: f.messages_out_per_s,
                dropped_total: f.dropped_total,
            })
            .collect();
        let mut groups = Vec::new();
        for group in self.node.group_ids() {
            let Some(reader) = self.node.reader(group) else {
                continue;
            };
            let topics = reader.topic_count().unwrap_or(0);
            let gateways = reader
                .subscribed_gateways()
                .map(|g| g.len() as u64)
                .unwrap_or(0);
            groups.push(GroupFigures {
                id: group.get(),
                topics,
                gateways,
                commits_per_s: self.node.commit_rates().rate(group),
            });
        }
        Ok(StatsReply {
            gateways,
            groups,
            manager: self.node.id(),
        })
    }

    /// `cluster connections --user U`: asked of every gateway with a session here, answered
    /// with what came back within [`QUERY_WAIT`] and the gateways that did not answer.
    pub(crate) async fn connections(
        &self,
        request: ConnectionsRequest,
    ) -> Result<ConnectionsReply, OperatorError> {
        self.require_joined()?;
        let user = checked_user(&request.user)?;
        let sessions = self.node.sessions().live();
        let asked: HashSet<GatewayId> = sessions.iter().map(|h| h.gateway).collect();
        let Some((query, mut answers)) = self.node.queries().start(asked.clone()) else {
            return Err(OperatorError::Busy(
                "too many connection queries at once on this manager; retry in a moment".into(),
            ));
        };
        for handle in &sessions {
            handle.send_control(session_frame::Frame::ConnectionsQuery(ConnectionsQuery {
                query,
                user: user.clone(),
            }));
        }
        let deadline = tokio::time::Instant::now() + QUERY_WAIT;
        let mut reply = ConnectionsReply::default();
        let mut answered = HashSet::new();
        while answered.len() < asked.len() {
            match tokio::time::timeout_at(deadline, answers.recv()).await {
                Ok(Some(answer)) => {
                    answered.insert(answer.gateway);
                    if answer.truncated {
                        reply.truncated.push(answer.gateway.get());
                    }
                    reply
                        .connections
                        .extend(answer.connections.into_iter().map(|c| UserConnection {
                            gateway: answer.gateway.get(),
                            conn: c.conn,
                            remote: c.remote,
                            since_ms: c.since_ms,
                            topics: c.topics,
                        }));
                }
                Ok(None) | Err(_) => break,
            }
        }
        self.node.queries().finish(query);
        let mut unanswered: Vec<u64> = asked.difference(&answered).map(|g| g.get()).collect();
        unanswered.sort_unstable();
        reply.unanswered = unanswered;
        reply.connections.sort_by_key(|c| (c.gateway, c.since_ms));
        Ok(reply)
    }

    /// Confirm through a read index that group 0's leader is here (and this copy is current),
    /// or say where the leader is; waits out an election within the proposal timeout.
    async fn confirm_group0(&self, forwarded: bool) -> Result<Confirmed, OperatorError> {
        self.require_joined()?;
        let group = GroupId(0);
        let (raft, reader) = match (self.node.raft(group), self.node.reader(group)) {
            (Some(raft), Some(reader)) => (raft, reader),
            _ => {
                return Err(OperatorError::Unavailable(
                    "group 0 is not running on this manager".into(),
                ))
            }
        };
        let timeout = self.node.config().raft.proposal_timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        // Right after a start or a leader's death there is no leader for a moment: ask again
        // until one is known (as a commit does), then read through it.
        loop {
            let no_leader = match tokio::time::timeout_at(deadline, raft.ensure_linearizable())
                .await
            {
                Ok(Ok(_)) => return Ok(Confirmed::Here(reader)),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))))
                    if !forwarded =>
                {
                    match f
                        .leader_node
                        .filter(|_| f.leader_id != Some(self.node.id()))
                    {
                        Some(node) => return Ok(Confirmed::Forward(node.admin)),
                        None => "group 0 has no leader right now (an election is under way); retry"
                            .to_string(),
                    }
                }
                Ok(Err(e)) => format!("group 0: cannot confirm its leadership: {e}; retry"),
                Err(_) => {
                    return Err(OperatorError::Unavailable(format!(
                        "group 0: leadership not confirmed within {timeout:?}; retry"
                    )))
                }
            };
            if tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
                return Err(OperatorError::Unavailable(no_leader));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `cluster history set|remove`, `cluster presence enable|disable`.
    pub(crate) async fn set_rule(
        &self,
        request: SetRuleRequest,
        forwarded: bool,
    ) -> Result<SetRuleReply, OperatorError> {
        firetower_proto::validate_pattern(&request.pattern)
            .map_err(|e| OperatorError::InvalidRequest(format!("{:?}: {e}", request.pattern)))?;
        let pattern = request.pattern.clone();
        let command = match (request.kind.as_str(), request.remove) {
            ("history", false) => {
                if request.size == 0 || request.size > MAX_HISTORY_SIZE {
                    return Err(OperatorError::InvalidRequest(format!(
                        "--size is 1 to {MAX_HISTORY_SIZE} messages"
                    )));
                }
                if request.ttl_ms == 0 || request.ttl_ms > MAX_HISTORY_TTL_MS {
                    return Err(OperatorError::InvalidRequest(
                        "--ttl is from 1 ms to 30 days".into(),
                    ));
                }
                Command::SetHistory {
                    pattern,
                    size: request.size,
                    ttl_ms: request.ttl_ms,
                }
            }
            ("history", true) => Command::RemoveHistory { pattern },
            ("presence", remove) => Command::SetPresence {
                pattern,
                enabled: !remove,
            },
            (other, _) => {
                return Err(OperatorError::InvalidRequest(format!(
                    "rule kind {other:?} is neither \"history\" nor \"presence\""
                )))
            }
        };
        match self.commit(command, forwarded).await? {
            Outcome::Committed(Response::Refused { reason }, _) => {
                Err(OperatorError::NotFound(reason))
            }
            Outcome::Committed(_, index) => {
                tracing::info!(
                    event = "operator_rule",
                    kind = %request.kind,
                    pattern = %request.pattern.escape_debug(),
                    remove = request.remove,
                    size = request.size,
                    ttl_ms = request.ttl_ms,
                    index,
                    "rule committed"
                );
                Ok(SetRuleReply { index })
            }
            Outcome::Forward(admin) => {
                let mut client = self.leader_client(&admin).await?;
                Ok(client.set_rule(forward(request)).await?.into_inner())
            }
        }
    }

    /// `cluster history list`, `cluster presence list`: read at group 0's leader.
    pub(crate) async fn list_rules(
        &self,
        request: ListRulesRequest,
        forwarded: bool,
    ) -> Result<ListRulesReply, OperatorError> {
        let reader = match self.confirm_group0(forwarded).await? {
            Confirmed::Here(reader) => reader,
            Confirmed::Forward(admin) => {
                let mut client = self.leader_client(&admin).await?;
                return Ok(client.list_rules(forward(request)).await?.into_inner());
            }
        };
        let rules = reader
            .rules()
            .map_err(|e| OperatorError::Unavailable(format!("reading group 0: {e}")))?;
        Ok(ListRulesReply {
            history: rules
                .history
                .into_iter()
                .map(|(pattern, r)| HistoryRuleEntry {
                    pattern,
                    size: r.size,
                    ttl_ms: r.ttl_ms,
                })
                .collect(),
            presence: rules.presence,
            version: rules.version,
        })
    }

    fn require_joined(&self) -> Result<(), OperatorError> {
        if self.node.cluster_id().is_empty() {
            return Err(OperatorError::Refused(format!(
                "manager {} is not in a cluster yet: run `firetower cluster init` first",
                self.node.id()
            )));
        }
        Ok(())
    }

    /// Propose `command` in group 0 here, or say where its leader is.
    async fn commit(&self, command: Command, forwarded: bool) -> Result<Outcome, OperatorError> {
        self.require_joined()?;
        let Some(proposer) = self.node.proposer(GroupId(0)) else {
            return Err(OperatorError::Unavailable(
                "group 0 is not running on this manager".into(),
            ));
        };
        let timeout = self.node.config().raft.proposal_timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match proposer.propose(command.clone()).await {
                Ok((response, index)) => return Ok(Outcome::Committed(response, index)),
                Err(ProposeError::NotLeader(Some((id, leader))))
                    if id != self.node.id() && !forwarded =>
                {
                    return Ok(Outcome::Forward(leader.admin));
                }
                Err(ProposeError::NotLeader(_)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(OperatorError::Unavailable(
                            "group 0 has no leader here right now (an election is under way, \
                             or no majority is reachable); nothing was committed; retry"
                                .into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(ProposeError::Timeout) => {
                    return Err(OperatorError::TimedOut(format!(
                        "group 0 did not commit within {timeout:?}; the change may or may not \
                         take effect: check with `cluster ban list` and retry"
                    )))
                }
                Err(ProposeError::Unavailable(m)) => return Err(OperatorError::Unavailable(m)),
            }
        }
    }

    async fn leader_client(
        &self,
        admin: &str,
    ) -> Result<
        firetower_proto::admin::admin_client::AdminClient<tonic::transport::Channel>,
        OperatorError,
    > {
        crate::membership::connect(admin, self.node.security(), FORWARD_TIMEOUT)
            .await
            .map_err(|s| {
                OperatorError::Unavailable(format!(
                    "group 0's leader at {admin} could not be reached: {}; retry",
                    s.message()
                ))
            })
    }
}

/// A request forwarded to group 0's leader, marked so it is not forwarded again.
fn forward<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request
}

fn checked_user(user: &str) -> Result<String, OperatorError> {
    BanTarget::User(user.to_string())
        .validate()
        .map_err(|e| OperatorError::InvalidRequest(e.to_string()))?;
    Ok(user.to_string())
}

/// Unix milliseconds on this manager's clock.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What a session that just opened is sent besides the ban list (its writer sends that):
/// the kicks of the last [`RECENT_KICKS`].
pub(crate) fn send_recent_kicks(node: &Node, handle: &crate::session_table::SessionHandle) {
    let Some(reader) = node.reader(GroupId(0)) else {
        return;
    };
    let since = unix_ms().saturating_sub(RECENT_KICKS.as_millis() as u64);
    if let Ok(kicks) = reader.kicks_after(0) {
        for kick in kicks.iter().filter(|k| k.at_ms >= since) {
            handle.send_control(kick_frame(kick));
        }
    }
}

/// The control task of a manager: follows group 0's bans and kicks and pushes them to every
/// session, and samples commit rates. Runs for the life of the manager.
pub(crate) fn spawn_control_task(node: Node) {
    tokio::spawn(async move {
        let shutdown = node.shutdown_token();
        let mut tick = tokio::time::interval(CONTROL_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent_version: Option<u64> = None;
        let mut sent_kick: Option<u64> = None;
        let mut last_sample = Instant::now() - COMMIT_SAMPLE_EVERY;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if last_sample.elapsed() >= COMMIT_SAMPLE_EVERY {
                last_sample = Instant::now();
                sample_commits(&node, last_sample);
            }
            let Some(reader) = node.reader(GroupId(0)) else {
                continue;
            };
            let Ok((version, last_kick)) = reader.control_versions() else {
                continue;
            };
            if sent_version != Some(version) {
                match reader.controls() {
                    Ok(controls) => {
                        let frames = BanFrames::encode(controls.bans_version, &controls.bans);
                        tracing::debug!(
                            version = frames.version,
                            bans = frames.count,
                            "ban list changed; pushing it to every session"
                        );
                        sent_version = Some(controls.bans_version);
                        node.set_ban_frames(frames);
                    }
                    Err(e) => tracing::warn!(error = %e, "reading group 0's bans"),
                }
            }
            // Kicks committed before this manager started were pushed by then (or are sent
            // to sessions that open within RECENT_KICKS).
            let from = *sent_kick.get_or_insert(last_kick);
            if last_kick > from {
                match reader.kicks_after(from) {
                    Ok(kicks) => {
                        let sessions = node.sessions().live();
                        for kick in &kicks {
                            for handle in &sessions {
                                handle.send_control(kick_frame(kick));
                            }
                        }
                        sent_kick = Some(last_kick);
                    }
                    Err(e) => tracing::warn!(error = %e, "reading group 0's kicks"),
                }
            }
        }
    });
}

fn sample_commits(node: &Node, now: Instant) {
    for (group, raft) in node.router().groups() {
        let applied = raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        node.commit_rates().sample(group, now, applied);
    }
}
