//! Cluster membership: init, join, add and remove managers, move a group's leadership, and
//! the members view. The admin gRPC API (`admin.rs`) is a thin layer over this; everything
//! here returns a typed [`MembershipError`].
//!
//! Operator calls may arrive at any manager. Calls that change a group's membership are
//! carried out by that group's leader: the receiving manager finds it and forwards the step
//! (`ChangeGroup`), so the operator never has to know who leads what.
//!
//! ```text
//!   cluster init ─▶ Describe every member ─▶ Join (all, no group) ─▶ Join (initialize g mod n)
//!   cluster add  ─▶ Join the new manager ─▶ per group: AddLearner ─▶ AddVoter (on the leader)
//!   cluster remove ─▶ per group: RemoveMember (on the leader)
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use firetower_link::Security;
use firetower_proto::admin::admin_client::AdminClient;
use firetower_proto::admin::change_group_request::Change;
use firetower_proto::admin::*;
use firetower_raft::{group_of, GroupId, ManagerNode, Raft};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::config::{DEFAULT_GROUPS, MAX_GROUPS};
use crate::meta::NodeMeta;
use crate::node::Node;

/// How long a call to another manager may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a `Describe` of another manager may take before it counts as unreachable.
const DESCRIBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long one membership step (add learner and wait for catch-up, promote, remove) may take.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a membership operation did not happen. Every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The request is malformed or names something impossible (a group that does not
    /// exist, too many groups, duplicate ids).
    #[error("{0}")]
    InvalidRequest(String),
    /// The cluster's state does not allow it (not joined yet, already in another cluster,
    /// a change refused by Raft).
    #[error("{0}")]
    Refused(String),
    /// A manager named in the request is not a member.
    #[error("{0}")]
    NotFound(String),
    /// The id of the manager to add is taken by another one.
    #[error("{0}")]
    IdTaken(String),
    /// No leader, no quorum or no answer right now: retry.
    #[error("{0}")]
    Unavailable(String),
    /// The operation ran out of attempts; the cluster keeps working as before.
    #[error("{0}")]
    TimedOut(String),
    /// A storage or Raft failure on this manager.
    #[error("{0}")]
    Internal(String),
    /// The identity file could not be written or the groups could not start.
    #[error(transparent)]
    Start(#[from] crate::error::StartError),
    /// Another manager, called on the way, answered with this status (passed on as it is).
    #[error("{}", .0.message())]
    Remote(Status),
}

impl MembershipError {
    /// The gRPC status code the admin API answers with.
    pub fn code(&self) -> Code {
        match self {
            MembershipError::InvalidRequest(_) => Code::InvalidArgument,
            MembershipError::Refused(_) => Code::FailedPrecondition,
            MembershipError::NotFound(_) => Code::NotFound,
            MembershipError::IdTaken(_) => Code::AlreadyExists,
            MembershipError::Unavailable(_) => Code::Unavailable,
            MembershipError::TimedOut(_) => Code::DeadlineExceeded,
            MembershipError::Internal(_) | MembershipError::Start(_) => Code::Internal,
            MembershipError::Remote(status) => status.code(),
        }
    }

    /// The message for the operator.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

impl From<Status> for MembershipError {
    fn from(status: Status) -> Self {
        MembershipError::Remote(status)
    }
}

impl From<MembershipError> for Status {
    fn from(e: MembershipError) -> Self {
        match e {
            MembershipError::Remote(status) => status,
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

/// Connect to a manager's admin API. `addr` is `host:port`. With mutual TLS the channel
/// presents `security`'s certificate and accepts only a manager certificate of the same CA.
pub async fn connect(
    addr: &str,
    security: &Security,
    timeout: Duration,
) -> Result<AdminClient<Channel>, Status> {
    let bad = |e: &dyn std::fmt::Display| {
        Status::invalid_argument(format!("bad admin address {addr:?}: {e}"))
    };
    let endpoint = match security {
        Security::Insecure => {
            Endpoint::from_shared(format!("http://{addr}")).map_err(|e| bad(&e))?
        }
        Security::Mutual(identity) => {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(identity.ca_pem()))
                .identity(Identity::from_pem(identity.cert_pem(), identity.key_pem()))
                .domain_name(firetower_link::SERVER_NAME);
            Endpoint::from_shared(format!("https://{addr}"))
                .map_err(|e| bad(&e))?
                .tls_config(tls)
                .map_err(|e| Status::invalid_argument(format!("TLS settings: {e}")))?
        }
    }
    .connect_timeout(CONNECT_TIMEOUT.min(timeout))
    .timeout(timeout);
    let channel = endpoint.connect().await.map_err(|e| {
        let detail = error_chain(&e);
        Status::unavailable(format!(
            "cannot reach the manager at {addr}: {detail} (is it running, is this its --admin \
             address, and does it use the same CA and TLS mode?)"
        ))
    })?;
    Ok(AdminClient::new(channel))
}

/// An error and its sources on one line: tonic's transport error alone says only
/// "transport error".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The membership service of one manager.
#[derive(Debug, Clone)]
pub(crate) struct Membership {
    node: Node,
}

impl Membership {
    pub(crate) fn new(node: Node) -> Self {
        Membership { node }
    }

    /// Record membership of a cluster and start its groups; initialize the listed groups with
    /// `members` as their voters. Idempotent for the same cluster.
    pub(crate) async fn join_cluster(
        &self,
        cluster_id: &str,
        groups: u32,
        members: &BTreeMap<u64, ManagerNode>,
        initialize: &[GroupId],
    ) -> Result<(), MembershipError> {
        let current = self.node.meta();
        if current.joined() {
            if current.cluster_id != cluster_id {
                return Err(MembershipError::Refused(format!(
                    "manager {} already belongs to cluster {}; it joins no other cluster. \
                     To move it, stop it and start it on an empty data directory",
                    self.node.id(),
                    current.cluster_id
                )));
            }
            if current.groups != groups {
                return Err(MembershipError::Refused(format!(
                    "manager {} has {} groups, the request has {groups}",
                    self.node.id(),
                    current.groups
                )));
            }
        } else {
            if groups == 0 || groups > MAX_GROUPS {
                return Err(MembershipError::InvalidRequest(format!(
                    "groups must be within 1..={}",
                    MAX_GROUPS
                )));
            }
            let new_meta = NodeMeta {
                cluster_id: cluster_id.to_string(),
                groups,
                ..self.node.meta()
            };
            crate::meta::store(&self.node.config().data_dir, &new_meta)?;
            self.node.set_meta(new_meta);
            self.node.start_groups(groups, false).await?;
        }
        for &group in initialize {
            let raft = self.node.raft(group).ok_or_else(|| {
                MembershipError::InvalidRequest(format!("group {group} does not exist"))
            })?;
            match raft.initialize(members.clone()).await {
                Ok(()) => tracing::info!(group = group.get(), "initialized group"),
                // A repeated Join (retry of an init that timed out) finds it initialized.
                Err(openraft::error::RaftError::APIError(
                    openraft::error::InitializeError::NotAllowed(_),
                )) => {}
                Err(e) => {
                    return Err(MembershipError::Internal(format!(
                        "initialize group {group}: {e}"
                    )))
                }
            }
        }
        Ok(())
    }

    pub(crate) fn require_joined(&self) -> Result<(), MembershipError> {
        if self.node.cluster_id().is_empty() {
            return Err(MembershipError::Refused(format!(
                "manager {} is not in a cluster yet: run `firetower cluster init --admin {} \
                 --member ...` first",
                self.node.id(),
                self.node.addrs().admin
            )));
        }
        Ok(())
    }

    pub(crate) fn check_group(&self, group: GroupId) -> Result<(), MembershipError> {
        let groups = self.node.group_count();
        if group.get() >= groups {
            return Err(MembershipError::InvalidRequest(format!(
                "group {group} does not exist: this cluster has groups 0..={}",
                groups.saturating_sub(1)
            )));
        }
        Ok(())
    }

    /// The Raft of `group` on this manager, or why there is none.
    fn running_raft(&self, group: GroupId) -> Result<Raft, MembershipError> {
        self.node.raft(group).ok_or_else(|| {
            MembershipError::Unavailable(format!("group {group} is not running here"))
        })
    }

    pub(crate) async fn local_describe(&self) -> DescribeReply {
        let meta = self.node.meta();
        let mut group_status = Vec::new();
        let mut replicas = Vec::new();
        for g in (0..meta.groups).map(GroupId) {
            if let Some((status, replica)) = self.node.group_status(g).await {
                group_status.push(status);
                replicas.push(replica);
            }
        }
        DescribeReply {
            id: self.node.id(),
            quic: self.node.addrs().quic.clone(),
            admin: self.node.addrs().admin.clone(),
            cluster_id: meta.cluster_id,
            groups: meta.groups,
            group_status,
            replicas,
        }
    }

    /// Describe a manager by address; the local one is answered without a network hop.
    async fn describe_at(&self, addr: &str) -> Result<DescribeReply, MembershipError> {
        if addr == self.node.addrs().admin {
            return Ok(self.local_describe().await);
        }
        let mut client = connect(addr, self.node.security(), DESCRIBE_TIMEOUT).await?;
        let reply = tokio::time::timeout(DESCRIBE_TIMEOUT, client.describe(DescribeRequest {}))
            .await
            .map_err(|_| {
                MembershipError::Unavailable(format!("manager at {addr} did not answer"))
            })??;
        Ok(reply.into_inner())
    }

    /// Carry out one membership step on a group's leader, following leader hints.
    async fn change_group(&self, group: GroupId, change: Change) -> Result<(), MembershipError> {
        let deadline = tokio::time::Instant::now() + CHANGE_TIMEOUT;
        let request = ChangeGroupRequest {
            group: group.get(),
            change: Some(change),
        };
        let mut target: Option<String> = None;
        loop {
            let reply = match &target {
                None => self.change_group_here(request.clone()).await?,
                Some(addr) => match self.change_group_at(addr, request.clone()).await {
                    Ok(reply) => reply,
                    // The hinted leader is down or no longer leads (a manager that just died
                    // is still the hint until the group elects another): ask here again.
                    Err(status)
                        if status.code() == Code::Unavailable
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tracing::debug!(group = group.get(), %addr, status = %status.message(),
                            "hinted leader unreachable; asking for the leader again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        target = None;
                        continue;
                    }
                    Err(status) => return Err(MembershipError::Remote(status)),
                },
            };
            if reply.done {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MembershipError::Unavailable(format!(
                    "group {group} has no reachable leader; the change was not made"
                )));
            }
            if reply.leader == 0 || reply.leader_admin.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                target = None;
            } else if reply.leader_admin == self.node.addrs().admin {
                target = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            } else {
                target = Some(reply.leader_admin);
            }
        }
    }

    /// One `ChangeGroup` call to the manager at `addr`.
    async fn change_group_at(
        &self,
        addr: &str,
        request: ChangeGroupRequest,
    ) -> Result<ChangeGroupReply, Status> {
        let mut client = connect(addr, self.node.security(), CHANGE_TIMEOUT).await?;
        Ok(client.change_group(request).await?.into_inner())
    }

    pub(crate) async fn change_group_here(
        &self,
        request: ChangeGroupRequest,
    ) -> Result<ChangeGroupReply, MembershipError> {
        self.require_joined()?;
        let group = GroupId(request.group);
        self.check_group(group)?;
        let raft = self.running_raft(group)?;
        let result = match request.change {
            None => {
                return Err(MembershipError::InvalidRequest(
                    "ChangeGroup without a change".into(),
                ))
            }
            Some(Change::AddLearner(m)) => {
                let node = ManagerNode {
                    quic: m.quic,
                    admin: m.admin,
                };
                raft.add_learner(m.id, node, true).await.map(|_| ())
            }
            Some(Change::AddVoter(id)) => {
                let m = raft.metrics().borrow().clone();
                if m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == id)
                {
                    Ok(())
                } else {
                    let ids = [id].into_iter().collect();
                    raft.change_membership(ChangeMembers::AddVoterIds(ids), false)
                        .await
                        .map(|_| ())
                }
            }
            Some(Change::RemoveMember(id)) => {
                let m = raft.metrics().borrow().clone();
                let membership = m.membership_config.membership();
                let ids = [id].into_iter().collect();
                if membership.voter_ids().any(|v| v == id) {
                    raft.change_membership(ChangeMembers::RemoveVoters(ids), false)
                        .await
                        .map(|_| ())
                } else if membership.get_node(&id).is_some() {
                    raft.change_membership(ChangeMembers::RemoveNodes(ids), false)
                        .await
                        .map(|_| ())
                } else {
                    Ok(())
                }
            }
        };
        match result {
            Ok(()) => Ok(ChangeGroupReply {
                done: true,
                leader: self.node.id(),
                leader_admin: self.node.addrs().admin.clone(),
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Ok(ChangeGroupReply {
                    done: false,
                    leader: f.leader_id.unwrap_or(0),
                    leader_admin: f.leader_node.map(|n| n.admin).unwrap_or_default(),
                })
            }
            // The previous step's membership entry is not committed yet: try again shortly.
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) => Ok(ChangeGroupReply {
                done: false,
                leader: self.node.id(),
                leader_admin: self.node.addrs().admin.clone(),
            }),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Err(
                MembershipError::Refused(format!("group {group}: membership change refused: {e}")),
            ),
            Err(RaftError::Fatal(e)) => {
                Err(MembershipError::Internal(format!("group {group}: {e}")))
            }
        }
    }

    pub(crate) async fn members_view(&self) -> Result<MembersReply, MembershipError> {
        self.require_joined()?;
        let known = self.node.known_managers();
        let describes = futures::future::join_all(known.iter().map(|(id, node)| async move {
            (*id, node.clone(), self.describe_at(&node.admin).await)
        }))
        .await;
        let mut managers = Vec::new();
        let mut views: BTreeMap<GroupId, Vec<(GroupStatus, ReplicaStatus)>> = BTreeMap::new();
        for (id, node, reply) in describes {
            let reachable = match reply {
                Ok(d) if d.id == id => {
                    for (s, r) in d.group_status.into_iter().zip(d.replicas) {
                        views.entry(GroupId(s.id)).or_default().push((s, r));
                    }
                    true
                }
                Ok(d) => {
                    tracing::warn!(expected = id, found = d.id, addr = %node.admin,
                        "another manager answers at this address");
                    false
                }
                Err(_) => false,
            };
            managers.push(ManagerInfo {
                id,
                quic: node.quic,
                admin: node.admin,
                reachable,
            });
        }
        let mut groups = Vec::new();
        for g in self.node.group_ids() {
            let Some(list) = views.get(&g) else { continue };
            // The leader's view is authoritative for membership and commit progress; without a
            // reachable leader, the view with the highest term is the freshest.
            let best = list
                .iter()
                .filter(|(_, r)| r.state == "leader")
                .max_by_key(|(_, r)| r.term)
                .or_else(|| list.iter().max_by_key(|(s, _)| (s.term, s.committed)));
            let Some((status, _)) = best else { continue };
            let mut status = status.clone();
            status.replicas = list.iter().map(|(_, r)| r.clone()).collect();
            groups.push(status);
        }
        Ok(MembersReply {
            cluster_id: self.node.cluster_id(),
            managers,
            groups,
        })
    }

    pub(crate) async fn init(&self, request: InitRequest) -> Result<InitReply, MembershipError> {
        let _guard = self.node.change_lock().await;
        if !self.node.cluster_id().is_empty() {
            return Err(MembershipError::Refused(format!(
                "manager {} already belongs to cluster {}: `cluster init` runs once per \
                 cluster. See it with `firetower cluster members --admin {}`; grow it with \
                 `firetower cluster add`",
                self.node.id(),
                self.node.cluster_id(),
                self.node.addrs().admin
            )));
        }
        let groups = if request.groups == 0 {
            DEFAULT_GROUPS
        } else {
            request.groups
        };
        if groups > crate::config::MAX_GROUPS {
            return Err(MembershipError::InvalidRequest(format!(
                "--groups {groups} is too many: at most {}",
                crate::config::MAX_GROUPS
            )));
        }
        let mut addrs = vec![self.node.addrs().admin.clone()];
        for a in request.members {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        let mut members: BTreeMap<u64, ManagerNode> = BTreeMap::new();
        for addr in &addrs {
            let d = self.describe_at(addr).await.map_err(|e| {
                MembershipError::Unavailable(format!("{}; nothing was changed", e.message()))
            })?;
            if !d.cluster_id.is_empty() {
                return Err(MembershipError::Refused(format!(
                    "manager {} at {addr} already belongs to cluster {}; nothing was changed. \
                     Leave it out, or start it on an empty data directory",
                    d.id, d.cluster_id
                )));
            }
            if let Some(other) = members.get(&d.id) {
                return Err(MembershipError::InvalidRequest(format!(
                    "the managers at {} and {addr} both have id {}; ids must be unique. \
                     Nothing was changed",
                    other.admin, d.id
                )));
            }
            members.insert(
                d.id,
                ManagerNode {
                    quic: d.quic,
                    admin: d.admin,
                },
            );
        }
        let cluster_id = new_cluster_id();
        let ids: Vec<u64> = members.keys().copied().collect();
        let proto_members: Vec<Member> = members
            .iter()
            .map(|(id, n)| Member {
                id: *id,
                quic: n.quic.clone(),
                admin: n.admin.clone(),
            })
            .collect();
        // Group g is first led by the (g mod n)-th manager, spreading leaders (and so publish
        // load) over the cluster from the start. Every manager joins (starts its groups) first
        // and only then are the groups initialized, so that no election reaches a manager that
        // does not host the group yet. A repeated Join is idempotent.
        let steps: Vec<(bool, usize, u64, ManagerNode)> = [false, true]
            .into_iter()
            .flat_map(|pass| {
                members
                    .iter()
                    .enumerate()
                    .map(move |(i, (id, node))| (pass, i, *id, node.clone()))
            })
            .collect();
        for (pass, i, id, node) in steps {
            let initialize: Vec<GroupId> = if pass {
                (0..groups)
                    .filter(|g| *g as usize % ids.len() == i)
                    .map(GroupId)
                    .collect()
            } else {
                Vec::new()
            };
            if id == self.node.id() {
                self.join_cluster(&cluster_id, groups, &members, &initialize)
                    .await?;
            } else {
                let mut client = connect(&node.admin, self.node.security(), CHANGE_TIMEOUT).await?;
                client
                    .join(JoinRequest {
                        cluster_id: cluster_id.clone(),
                        groups,
                        members: proto_members.clone(),
                        initialize: initialize.iter().map(|g| g.get()).collect(),
                    })
                    .await
                    .map_err(|e| {
                        MembershipError::Internal(format!(
                            "manager {id} at {} refused to join: {}. The cluster is partly \
                             formed; see docs/operations.md, 'A failed init'",
                            node.admin,
                            e.message()
                        ))
                    })?;
            }
        }
        let missing = self.node.wait_for_leaders(Duration::from_secs(10)).await;
        if !missing.is_empty() {
            tracing::warn!(?missing, "groups without a leader 10 s after init");
        }
        let managers = members
            .into_iter()
            .map(|(id, n)| ManagerInfo {
                id,
                quic: n.quic,
                admin: n.admin,
                reachable: true,
            })
            .collect();
        Ok(InitReply {
            cluster_id,
            managers,
            groups,
        })
    }

    pub(crate) async fn add_manager(
        &self,
        request: AddManagerRequest,
    ) -> Result<AddManagerReply, MembershipError> {
        self.require_joined()?;
        let addr = request.admin;
        let _guard = self.node.change_lock().await;
        let d = self.describe_at(&addr).await?;
        let cluster_id = self.node.cluster_id();
        if !d.cluster_id.is_empty() && d.cluster_id != cluster_id {
            return Err(MembershipError::Refused(format!(
                "manager {} at {addr} belongs to another cluster ({}); nothing was changed. \
                 Start it on an empty data directory to add it here",
                d.id, d.cluster_id
            )));
        }
        let known = self.node.known_managers();
        if let Some(existing) = known.get(&d.id) {
            if existing.admin != d.admin {
                return Err(MembershipError::IdTaken(format!(
                    "id {} is taken by the manager at {}; give the new manager another --id",
                    d.id, existing.admin
                )));
            }
        }
        let member = Member {
            id: d.id,
            quic: d.quic.clone(),
            admin: d.admin.clone(),
        };
        let mut members = known.clone();
        members.insert(
            d.id,
            ManagerNode {
                quic: d.quic.clone(),
                admin: d.admin.clone(),
            },
        );
        let mut client = connect(&addr, self.node.security(), CHANGE_TIMEOUT).await?;
        client
            .join(JoinRequest {
                cluster_id: cluster_id.clone(),
                groups: self.node.group_count(),
                members: members
                    .iter()
                    .map(|(id, n)| Member {
                        id: *id,
                        quic: n.quic.clone(),
                        admin: n.admin.clone(),
                    })
                    .collect(),
                initialize: Vec::new(),
            })
            .await?;
        for g in self.node.group_ids() {
            // A leader change between the two steps can lose a learner that was not yet
            // committed everywhere: the promotion is then refused ("learner not found"), and
            // adding the learner again and promoting it once more is the cure.
            let mut tries = 0;
            loop {
                self.change_group(g, Change::AddLearner(member.clone()))
                    .await?;
                match self.change_group(g, Change::AddVoter(d.id)).await {
                    Ok(()) => break,
                    Err(e)
                        if e.code() == Code::FailedPrecondition
                            && e.message().contains("not found")
                            && tries < 3 =>
                    {
                        tries += 1;
                        tracing::info!(group = g.get(), manager = d.id, error = %e.message(), "learner lost before its promotion; adding it again");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(AddManagerReply {
            manager: Some(ManagerInfo {
                id: d.id,
                quic: d.quic,
                admin: d.admin,
                reachable: true,
            }),
        })
    }

    pub(crate) async fn remove_manager(
        &self,
        request: RemoveManagerRequest,
    ) -> Result<RemoveManagerReply, MembershipError> {
        self.require_joined()?;
        let id = request.id;
        let _guard = self.node.change_lock().await;
        let known = self.node.known_managers();
        if !known.contains_key(&id) {
            return Err(MembershipError::NotFound(format!(
                "manager {id} is not a member of this cluster; `firetower cluster members` \
                 lists the members"
            )));
        }
        if known.len() == 1 {
            return Err(MembershipError::Refused(format!(
                "manager {id} is the last member; a cluster cannot remove its last manager"
            )));
        }
        for g in self.node.group_ids() {
            self.change_group(g, Change::RemoveMember(id)).await?;
        }
        Ok(RemoveManagerReply {})
    }

    pub(crate) async fn transfer_leader(
        &self,
        request: TransferLeaderRequest,
    ) -> Result<TransferLeaderReply, MembershipError> {
        self.require_joined()?;
        let TransferLeaderRequest { group, to } = request;
        let group = GroupId(group);
        self.check_group(group)?;
        let known = self.node.known_managers();
        let target = known.get(&to).cloned().ok_or_else(|| {
            MembershipError::NotFound(format!("manager {to} is not a member of this cluster"))
        })?;
        let raft = self.running_raft(group)?;
        let is_voter = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == to);
        if !is_voter {
            return Err(MembershipError::Refused(format!(
                "manager {to} is not a voter of group {group}; only voters can lead"
            )));
        }
        let lease = Duration::from_millis(self.node.config().raft.election_timeout_max_ms);
        for _attempt in 0..3 {
            let Some((leader, leader_node)) = self.node.leader_of(group) else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if leader == to {
                let term = raft.metrics().borrow().current_term;
                return Ok(TransferLeaderReply { leader, term });
            }
            // Step 1: the leader stops heartbeats until the followers' leases run out, so the
            // target's vote request is not refused on account of a live leader.
            let hold = HoldHeartbeatsRequest {
                group: group.get(),
                millis: (lease * 3).as_millis() as u64,
            };
            connect(&leader_node.admin, self.node.security(), CHANGE_TIMEOUT)
                .await?
                .hold_heartbeats(hold)
                .await?;
            tokio::time::sleep(lease + Duration::from_millis(50)).await;
            // Step 2: the target stands for election with an up-to-date log and wins.
            connect(&target.admin, self.node.security(), CHANGE_TIMEOUT)
                .await?
                .campaign(CampaignRequest { group: group.get() })
                .await?;
            let deadline = tokio::time::Instant::now() + lease * 3;
            while tokio::time::Instant::now() < deadline {
                if let Some((leader, _)) = self.node.leader_of(group) {
                    if leader == to {
                        let term = raft.metrics().borrow().current_term;
                        return Ok(TransferLeaderReply { leader, term });
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Err(MembershipError::TimedOut(format!(
            "manager {to} did not win the election of group {group} in three attempts; the \
             group keeps a working leader. Retry when the write load is lower"
        )))
    }

    pub(crate) async fn topic_info(
        &self,
        request: TopicInfoRequest,
    ) -> Result<TopicInfoReply, MembershipError> {
        self.require_joined()?;
        let topic = request.topic;
        firetower_proto::validate_topic(&topic)
            .map_err(|e| MembershipError::InvalidRequest(format!("topic {topic:?}: {e}")))?;
        let group = group_of(&topic, self.node.group_count());
        let deadline = tokio::time::Instant::now() + self.node.config().raft.proposal_timeout();
        loop {
            match crate::topics::linearizable_gateways(&self.node, group, &topic).await {
                Ok(gateways) => {
                    return Ok(TopicInfoReply {
                        topic,
                        group: group.get(),
                        leader: self.node.id(),
                        gateways,
                    })
                }
                Err(crate::topics::ReadError::NotLeader {
                    leader: Some((id, node)),
                }) if id != self.node.id() => {
                    let mut client =
                        connect(&node.admin, self.node.security(), DESCRIBE_TIMEOUT * 4).await?;
                    let reply = client.topic_info(TopicInfoRequest { topic }).await?;
                    return Ok(reply.into_inner());
                }
                Err(crate::topics::ReadError::NotLeader { .. }) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(MembershipError::Unavailable(format!(
                            "group {group} has no leader right now (election under way or no \
                             majority reachable); retry"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(crate::topics::ReadError::Unavailable(m)) => {
                    return Err(MembershipError::Unavailable(m));
                }
            }
        }
    }

    pub(crate) async fn join(&self, request: JoinRequest) -> Result<JoinReply, MembershipError> {
        let r = request;
        if r.cluster_id.is_empty() {
            return Err(MembershipError::InvalidRequest(
                "Join without a cluster id".into(),
            ));
        }
        if !r.members.iter().any(|m| m.id == self.node.id()) {
            return Err(MembershipError::InvalidRequest(format!(
                "Join names no member with this manager's id {}",
                self.node.id()
            )));
        }
        let members: BTreeMap<u64, ManagerNode> = r
            .members
            .into_iter()
            .map(|m| {
                (
                    m.id,
                    ManagerNode {
                        quic: m.quic,
                        admin: m.admin,
                    },
                )
            })
            .collect();
        let initialize: Vec<GroupId> = r.initialize.into_iter().map(GroupId).collect();
        // Init holds its own lock while it sends Join to itself; only remote Joins lock here.
        self.join_cluster(&r.cluster_id, r.groups, &members, &initialize)
            .await?;
        Ok(JoinReply {})
    }

    pub(crate) async fn campaign(
        &self,
        request: CampaignRequest,
    ) -> Result<CampaignReply, MembershipError> {
        self.require_joined()?;
        let group = GroupId(request.group);
        self.check_group(group)?;
        let raft = self.running_raft(group)?;
        raft.trigger()
            .elect()
            .await
            .map_err(|e| MembershipError::Internal(format!("group {group}: {e}")))?;
        Ok(CampaignReply {})
    }

    pub(crate) async fn hold_heartbeats(
        &self,
        request: HoldHeartbeatsRequest,
    ) -> Result<HoldHeartbeatsReply, MembershipError> {
        self.require_joined()?;
        let HoldHeartbeatsRequest { group, millis } = request;
        let group = GroupId(group);
        self.check_group(group)?;
        let raft = self.running_raft(group)?;
        if raft.metrics().borrow().current_leader != Some(self.node.id()) {
            return Ok(HoldHeartbeatsReply { held: false });
        }
        let millis = millis.min(10_000);
        raft.runtime_config().heartbeat(false);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            raft.runtime_config().heartbeat(true);
        });
        Ok(HoldHeartbeatsReply { held: true })
    }
}

/// A fresh random cluster id: 128 bits, hex.
fn new_cluster_id() -> String {
    let a: u64 = rand::random();
    let b: u64 = rand::random();
    format!("{a:016x}{b:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_grpc_code_and_message() {
        for (error, code) in [
            (
                MembershipError::InvalidRequest("a".into()),
                Code::InvalidArgument,
            ),
            (
                MembershipError::Refused("a".into()),
                Code::FailedPrecondition,
            ),
            (MembershipError::NotFound("a".into()), Code::NotFound),
            (MembershipError::IdTaken("a".into()), Code::AlreadyExists),
            (MembershipError::Unavailable("a".into()), Code::Unavailable),
            (
                MembershipError::TimedOut("a".into()),
                Code::DeadlineExceeded,
            ),
            (MembershipError::Internal("a".into()), Code::Internal),
        ] {
            assert_eq!(error.code(), code);
            let status = Status::from(error);
            assert_eq!((status.code(), status.message()), (code, "a"));
        }
        // A status from another manager passes through unchanged.
        let remote = MembershipError::from(Status::not_found("manager 9 is gone"));
        assert_eq!(remote.message(), "manager 9 is gone");
        let status = Status::from(remote);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "manager 9 is gone");
    }

    #[test]
    fn cluster_ids_are_128_bit_hex() {
        let a = new_cluster_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_cluster_id());
    }
}
