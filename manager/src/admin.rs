//! The admin gRPC API (`firetower.admin.v1.Admin`), plus gRPC health checking and server
//! reflection on the same port.
//!
//! Operator calls may arrive at any manager. Calls that change a group's membership are
//! carried out by that group's leader: the receiving manager finds it and forwards the step
//! (`ChangeGroup`), so the operator never has to know who leads what.

use std::collections::BTreeMap;
use std::time::Duration;

use firetower_proto::admin::admin_client::AdminClient;
use firetower_proto::admin::admin_server::{Admin, AdminServer};
use firetower_proto::admin::change_group_request::Change;
use firetower_proto::admin::*;
use firetower_raft::{group_of, GroupId, ManagerNode};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::config::DEFAULT_GROUPS;
use crate::server::Manager;

/// How long a call to another manager may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a `Describe` of another manager may take before it counts as unreachable.
const DESCRIBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long one membership step (add learner and wait for catch-up, promote, remove) may take.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Connect to a manager's admin API. `addr` is `host:port`.
pub async fn connect(addr: &str, timeout: Duration) -> Result<AdminClient<Channel>, Status> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::invalid_argument(format!("bad admin address {addr:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .timeout(timeout);
    let channel = endpoint.connect().await.map_err(|e| {
        Status::unavailable(format!(
            "cannot reach the manager at {addr}: {e} (is it running, and is this its --admin address?)"
        ))
    })?;
    Ok(AdminClient::new(channel))
}

/// The gRPC router with the admin API, health checking and reflection.
pub(crate) async fn router(manager: Manager) -> tonic::transport::server::Router {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(firetower_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let mut builder = tonic::transport::Server::builder();
    let router = builder
        .add_service(health_service)
        .add_service(AdminServer::new(AdminService { manager }));
    match reflection {
        Ok(reflection) => router.add_service(reflection),
        Err(e) => {
            tracing::warn!(error = %e, "gRPC reflection disabled");
            router
        }
    }
}

/// The admin API of one manager.
#[derive(Debug, Clone)]
pub struct AdminService {
    manager: Manager,
}

impl AdminService {
    fn require_joined(&self) -> Result<(), Status> {
        if self.manager.cluster_id().is_empty() {
            return Err(Status::failed_precondition(format!(
                "manager {} is not in a cluster yet: run `firetower cluster init --admin {} \
                 --member ...` first",
                self.manager.id(),
                self.manager.node().admin
            )));
        }
        Ok(())
    }

    fn check_group(&self, group: u32) -> Result<(), Status> {
        let groups = self.manager.group_count();
        if group >= groups {
            return Err(Status::invalid_argument(format!(
                "group {group} does not exist: this cluster has groups 0..={}",
                groups.saturating_sub(1)
            )));
        }
        Ok(())
    }

    async fn local_describe(&self) -> DescribeReply {
        let meta = self.manager.meta();
        let mut group_status = Vec::new();
        let mut replicas = Vec::new();
        for g in 0..meta.groups {
            if let Some((status, replica)) = self.manager.group_status(g).await {
                group_status.push(status);
                replicas.push(replica);
            }
        }
        DescribeReply {
            id: self.manager.id(),
            quic: self.manager.node().quic.clone(),
            admin: self.manager.node().admin.clone(),
            cluster_id: meta.cluster_id,
            groups: meta.groups,
            group_status,
            replicas,
        }
    }

    /// Describe a manager by address; the local one is answered without a network hop.
    async fn describe_at(&self, addr: &str) -> Result<DescribeReply, Status> {
        if addr == self.manager.node().admin {
            return Ok(self.local_describe().await);
        }
        let mut client = connect(addr, DESCRIBE_TIMEOUT).await?;
        let reply = tokio::time::timeout(DESCRIBE_TIMEOUT, client.describe(DescribeRequest {}))
            .await
            .map_err(|_| Status::unavailable(format!("manager at {addr} did not answer")))??;
        Ok(reply.into_inner())
    }

    /// Carry out one membership step on a group's leader, following leader hints.
    async fn change_group(&self, group: GroupId, change: Change) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + CHANGE_TIMEOUT;
        let request = ChangeGroupRequest {
            group,
            change: Some(change),
        };
        let mut target: Option<String> = None;
        loop {
            let reply = match &target {
                None => self.change_group_local(request.clone()).await?,
                Some(addr) => {
                    let mut client = connect(addr, CHANGE_TIMEOUT).await?;
                    client.change_group(request.clone()).await?.into_inner()
                }
            };
            if reply.done {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::unavailable(format!(
                    "group {group} has no reachable leader; the change was not made"
                )));
            }
            if reply.leader == 0 || reply.leader_admin.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                target = None;
            } else if reply.leader_admin == self.manager.node().admin {
                target = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            } else {
                target = Some(reply.leader_admin);
            }
        }
    }

    async fn change_group_local(
        &self,
        request: ChangeGroupRequest,
    ) -> Result<ChangeGroupReply, Status> {
        self.require_joined()?;
        self.check_group(request.group)?;
        let group = request.group;
        let raft = self
            .manager
            .raft(group)
            .ok_or_else(|| Status::unavailable(format!("group {group} is not running here")))?;
        let result = match request.change {
            None => return Err(Status::invalid_argument("ChangeGroup without a change")),
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
                leader: self.manager.id(),
                leader_admin: self.manager.node().admin.clone(),
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
                leader: self.manager.id(),
                leader_admin: self.manager.node().admin.clone(),
            }),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(Status::failed_precondition(format!(
                    "group {group}: membership change refused: {e}"
                )))
            }
            Err(RaftError::Fatal(e)) => Err(Status::internal(format!("group {group}: {e}"))),
        }
    }

    async fn members_view(&self) -> Result<MembersReply, Status> {
        self.require_joined()?;
        let known = self.manager.known_managers();
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
                        views.entry(s.id).or_default().push((s, r));
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
        for g in 0..self.manager.group_count() {
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
            cluster_id: self.manager.cluster_id(),
            managers,
            groups,
        })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeReply>, Status> {
        Ok(Response::new(self.local_describe().await))
    }

    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<MembersReply>, Status> {
        Ok(Response::new(self.members_view().await?))
    }

    async fn init(&self, request: Request<InitRequest>) -> Result<Response<InitReply>, Status> {
        let request = request.into_inner();
        let _guard = self.manager.inner_change_lock().await;
        if !self.manager.cluster_id().is_empty() {
            return Err(Status::failed_precondition(format!(
                "manager {} already belongs to cluster {}: `cluster init` runs once per \
                 cluster. See it with `firetower cluster members --admin {}`; grow it with \
                 `firetower cluster add`",
                self.manager.id(),
                self.manager.cluster_id(),
                self.manager.node().admin
            )));
        }
        let groups = if request.groups == 0 {
            DEFAULT_GROUPS
        } else {
            request.groups
        };
        if groups > crate::config::MAX_GROUPS {
            return Err(Status::invalid_argument(format!(
                "--groups {groups} is too many: at most {}",
                crate::config::MAX_GROUPS
            )));
        }
        let mut addrs = vec![self.manager.node().admin.clone()];
        for a in request.members {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        let mut members: BTreeMap<u64, ManagerNode> = BTreeMap::new();
        for addr in &addrs {
            let d = self.describe_at(addr).await.map_err(|e| {
                Status::unavailable(format!("{}; nothing was changed", e.message()))
            })?;
            if !d.cluster_id.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "manager {} at {addr} already belongs to cluster {}; nothing was changed. \
                     Leave it out, or start it on an empty data directory",
                    d.id, d.cluster_id
                )));
            }
            if let Some(other) = members.get(&d.id) {
                return Err(Status::invalid_argument(format!(
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
            let initialize: Vec<u32> = if pass {
                (0..groups)
                    .filter(|g| *g as usize % ids.len() == i)
                    .collect()
            } else {
                Vec::new()
            };
            if id == self.manager.id() {
                self.manager
                    .join(&cluster_id, groups, &members, &initialize)
                    .await?;
            } else {
                let mut client = connect(&node.admin, CHANGE_TIMEOUT).await?;
                client
                    .join(JoinRequest {
                        cluster_id: cluster_id.clone(),
                        groups,
                        members: proto_members.clone(),
                        initialize,
                    })
                    .await
                    .map_err(|e| {
                        Status::internal(format!(
                            "manager {id} at {} refused to join: {}. The cluster is partly \
                             formed; see docs/operations.md, 'A failed init'",
                            node.admin,
                            e.message()
                        ))
                    })?;
            }
        }
        let missing = self.manager.wait_for_leaders(Duration::from_secs(10)).await;
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
        Ok(Response::new(InitReply {
            cluster_id,
            managers,
            groups,
        }))
    }

    async fn add_manager(
        &self,
        request: Request<AddManagerRequest>,
    ) -> Result<Response<AddManagerReply>, Status> {
        self.require_joined()?;
        let addr = request.into_inner().admin;
        let _guard = self.manager.inner_change_lock().await;
        let d = self.describe_at(&addr).await?;
        let cluster_id = self.manager.cluster_id();
        if !d.cluster_id.is_empty() && d.cluster_id != cluster_id {
            return Err(Status::failed_precondition(format!(
                "manager {} at {addr} belongs to another cluster ({}); nothing was changed. \
                 Start it on an empty data directory to add it here",
                d.id, d.cluster_id
            )));
        }
        let known = self.manager.known_managers();
        if let Some(existing) = known.get(&d.id) {
            if existing.admin != d.admin {
                return Err(Status::already_exists(format!(
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
        let mut client = connect(&addr, CHANGE_TIMEOUT).await?;
        client
            .join(JoinRequest {
                cluster_id: cluster_id.clone(),
                groups: self.manager.group_count(),
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
        for g in 0..self.manager.group_count() {
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
                        if e.code() == tonic::Code::FailedPrecondition
                            && e.message().contains("not found")
                            && tries < 3 =>
                    {
                        tries += 1;
                        tracing::info!(group = g, manager = d.id, error = %e.message(), "learner lost before its promotion; adding it again");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Response::new(AddManagerReply {
            manager: Some(ManagerInfo {
                id: d.id,
                quic: d.quic,
                admin: d.admin,
                reachable: true,
            }),
        }))
    }

    async fn remove_manager(
        &self,
        request: Request<RemoveManagerRequest>,
    ) -> Result<Response<RemoveManagerReply>, Status> {
        self.require_joined()?;
        let id = request.into_inner().id;
        let _guard = self.manager.inner_change_lock().await;
        let known = self.manager.known_managers();
        if !known.contains_key(&id) {
            return Err(Status::not_found(format!(
                "manager {id} is not a member of this cluster; `firetower cluster members` \
                 lists the members"
            )));
        }
        if known.len() == 1 {
            return Err(Status::failed_precondition(format!(
                "manager {id} is the last member; a cluster cannot remove its last manager"
            )));
        }
        for g in 0..self.manager.group_count() {
            self.change_group(g, Change::RemoveMember(id)).await?;
        }
        Ok(Response::new(RemoveManagerReply {}))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderReply>, Status> {
        self.require_joined()?;
        let TransferLeaderRequest { group, to } = request.into_inner();
        self.check_group(group)?;
        let known = self.manager.known_managers();
        let target = known.get(&to).cloned().ok_or_else(|| {
            Status::not_found(format!("manager {to} is not a member of this cluster"))
        })?;
        let raft = self
            .manager
            .raft(group)
            .ok_or_else(|| Status::unavailable(format!("group {group} is not running here")))?;
        let is_voter = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == to);
        if !is_voter {
            return Err(Status::failed_precondition(format!(
                "manager {to} is not a voter of group {group}; only voters can lead"
            )));
        }
        let lease = Duration::from_millis(self.manager.config().raft.election_timeout_max_ms);
        for _attempt in 0..3 {
            let Some((leader, leader_node)) = self.manager.leader_of(group) else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if leader == to {
                let term = raft.metrics().borrow().current_term;
                return Ok(Response::new(TransferLeaderReply { leader, term }));
            }
            // Step 1: the leader stops heartbeats until the followers' leases run out, so the
            // target's vote request is not refused on account of a live leader.
            let hold = HoldHeartbeatsRequest {
                group,
                millis: (lease * 3).as_millis() as u64,
            };
            connect(&leader_node.admin, CHANGE_TIMEOUT)
                .await?
                .hold_heartbeats(hold)
                .await?;
            tokio::time::sleep(lease + Duration::from_millis(50)).await;
            // Step 2: the target stands for election with an up-to-date log and wins.
            connect(&target.admin, CHANGE_TIMEOUT)
                .await?
                .campaign(CampaignRequest { group })
                .await?;
            let deadline = tokio::time::Instant::now() + lease * 3;
            while tokio::time::Instant::now() < deadline {
                if let Some((leader, _)) = self.manager.leader_of(group) {
                    if leader == to {
                        let term = raft.metrics().borrow().current_term;
                        return Ok(Response::new(TransferLeaderReply { leader, term }));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Err(Status::deadline_exceeded(format!(
            "manager {to} did not win the election of group {group} in three attempts; the \
             group keeps a working leader. Retry when the write load is lower"
        )))
    }

    async fn topic_info(
        &self,
        request: Request<TopicInfoRequest>,
    ) -> Result<Response<TopicInfoReply>, Status> {
        self.require_joined()?;
        let topic = request.into_inner().topic;
        firetower_proto::validate_topic(&topic)
            .map_err(|e| Status::invalid_argument(format!("topic {topic:?}: {e}")))?;
        let group = group_of(&topic, self.manager.group_count());
        let deadline = tokio::time::Instant::now() + self.manager.config().raft.proposal_timeout();
        loop {
            match crate::link::linearizable_gateways(&self.manager, group, &topic).await {
                Ok(gateways) => {
                    return Ok(Response::new(TopicInfoReply {
                        topic,
                        group,
                        leader: self.manager.id(),
                        gateways,
                    }))
                }
                Err(crate::link::ReadError::NotLeader {
                    leader: Some((id, node)),
                }) if id != self.manager.id() => {
                    let mut client = connect(&node.admin, DESCRIBE_TIMEOUT * 4).await?;
                    let reply = client.topic_info(TopicInfoRequest { topic }).await?;
                    return Ok(reply);
                }
                Err(crate::link::ReadError::NotLeader { .. }) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Status::unavailable(format!(
                            "group {group} has no leader right now (election under way or no \
                             majority reachable); retry"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(crate::link::ReadError::Unavailable(m)) => {
                    return Err(Status::unavailable(m));
                }
            }
        }
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let r = request.into_inner();
        if r.cluster_id.is_empty() {
            return Err(Status::invalid_argument("Join without a cluster id"));
        }
        if !r.members.iter().any(|m| m.id == self.manager.id()) {
            return Err(Status::invalid_argument(format!(
                "Join names no member with this manager's id {}",
                self.manager.id()
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
        // Init holds its own lock while it sends Join to itself; only remote Joins lock here.
        self.manager
            .join(&r.cluster_id, r.groups, &members, &r.initialize)
            .await?;
        Ok(Response::new(JoinReply {}))
    }

    async fn change_group(
        &self,
        request: Request<ChangeGroupRequest>,
    ) -> Result<Response<ChangeGroupReply>, Status> {
        Ok(Response::new(
            self.change_group_local(request.into_inner()).await?,
        ))
    }

    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignReply>, Status> {
        self.require_joined()?;
        let group = request.into_inner().group;
        self.check_group(group)?;
        let raft = self
            .manager
            .raft(group)
            .ok_or_else(|| Status::unavailable(format!("group {group} is not running here")))?;
        raft.trigger()
            .elect()
            .await
            .map_err(|e| Status::internal(format!("group {group}: {e}")))?;
        Ok(Response::new(CampaignReply {}))
    }

    async fn hold_heartbeats(
        &self,
        request: Request<HoldHeartbeatsRequest>,
    ) -> Result<Response<HoldHeartbeatsReply>, Status> {
        self.require_joined()?;
        let HoldHeartbeatsRequest { group, millis } = request.into_inner();
        self.check_group(group)?;
        let raft = self
            .manager
            .raft(group)
            .ok_or_else(|| Status::unavailable(format!("group {group} is not running here")))?;
        if raft.metrics().borrow().current_leader != Some(self.manager.id()) {
            return Ok(Response::new(HoldHeartbeatsReply { held: false }));
        }
        let millis = millis.min(10_000);
        raft.runtime_config().heartbeat(false);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            raft.runtime_config().heartbeat(true);
        });
        Ok(Response::new(HoldHeartbeatsReply { held: true }))
    }
}

/// A fresh random cluster id: 128 bits, hex.
fn new_cluster_id() -> String {
    let a: u64 = rand::random();
    let b: u64 = rand::random();
    format!("{a:016x}{b:016x}")
}
