//! The admin gRPC API (`firetower.admin.v1.Admin`), plus gRPC health checking and server
//! reflection (v1 and v1alpha) on the same port. A thin layer: every call is authorized from
//! the caller's certificate, then carried out by [`Membership`](crate::membership), whose
//! [`MembershipError`] becomes the gRPC status.
//!
//! Who may call what, with mutual TLS (the caller's role is read by [`crate::admin_tls`]):
//!
//! | call | operator | manager | gateway | no certificate |
//! | --- | --- | --- | --- | --- |
//! | health, reflection | yes | yes | yes | yes |
//! | `Describe`, `Members` | yes | yes | yes | no |
//! | `Join`, `ChangeGroup`, `TopicInfo` (calls managers make to each other) | yes | yes | no | no |
//! | `Init`, `AddManager`, `RemoveManager`, `TransferLeader` | yes | no | no | no |
//! | `ListBans`, `Stats`, `Connections` | yes | no | no | no |
//! | `Kick`, `AddBan`, `RemoveBan` | yes | forwarded to group 0's leader only | no | no |
//! | `HoldHeartbeats`, `Campaign` | with `--unsafe-test-hooks` | yes (steps of `TransferLeader`) | no | no |
//!
//! A refusal is `UNAUTHENTICATED` (no certificate) or `PERMISSION_DENIED` (a certificate of
//! the wrong role), decided before anything changes. With `--insecure` no caller can be told
//! apart from another and every call is served, as before certificates existed.

use firetower_link::Role;
use firetower_proto::admin::admin_server::{Admin, AdminServer};
use firetower_proto::admin::*;
use tonic::{Request, Response, Status};

use crate::admin_tls::AdminPeer;
use crate::membership::{Membership, MembershipError};
use crate::node::Node;
use crate::operators::{Operators, FORWARDED};

/// The gRPC router with the admin API, health checking and reflection (v1 and v1alpha).
pub(crate) async fn router(node: Node) -> tonic::transport::server::Router {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
        .await;
    // Fail-stop: NOT_SERVING from the first fatal failure until the process exits.
    let (fatal, reporter) = (node.fatal(), health_reporter.clone());
    tokio::spawn(async move {
        fatal.await;
        reporter
            .set_not_serving::<AdminServer<AdminService>>()
            .await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(firetower_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let service = AdminService {
        secure: node.security().is_mutual(),
        test_hooks: node.config().unsafe_test_hooks,
        operators: Operators::new(node.clone()),
        membership: Membership::new(node),
    };
    let mut builder = tonic::transport::Server::builder();
    let mut router = builder
        .add_service(health_service)
        .add_service(AdminServer::new(service));
    match reflection().build_v1() {
        Ok(v1) => router = router.add_service(v1),
        Err(e) => tracing::warn!(error = %e, "gRPC reflection v1 disabled"),
    }
    // v1alpha too: Python's grpcio-reflection, older grpcurl and several GUI clients speak
    // only that one.
    match reflection().build_v1alpha() {
        Ok(v1alpha) => router = router.add_service(v1alpha),
        Err(e) => tracing::warn!(error = %e, "gRPC reflection v1alpha disabled"),
    }
    router
}

/// The admin API of one manager.
#[derive(Debug, Clone)]
pub struct AdminService {
    membership: Membership,
    operators: Operators,
    /// Mutual TLS: calls are authorized by the caller's role.
    secure: bool,
    /// `--unsafe-test-hooks`: operators may call `HoldHeartbeats` and `Campaign` directly.
    test_hooks: bool,
}

/// What an admin call needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Reading the cluster's shape: any certificate of the cluster.
    Read,
    /// Calls managers make to each other: manager or operator.
    Internal,
    /// Changing the cluster: operator.
    Operate,
    /// Disturbing the cluster on purpose: a manager (as a step of `TransferLeader`), or an
    /// operator when the manager runs with `--unsafe-test-hooks`.
    Disturb,
    /// An operator control committed in group 0: an operator, or a manager forwarding an
    /// operator's call to group 0's leader (marked forwarded).
    Control,
}

impl AdminService {
    /// Whether the caller of `request` may make `call`; refused before anything changes.
    fn authorize<T>(&self, request: &Request<T>, call: &str, access: Access) -> Result<(), Status> {
        if !self.secure {
            return Ok(());
        }
        let peer = request.extensions().get::<AdminPeer>();
        let Some(role) = peer.and_then(|p| p.role.as_ref()) else {
            return Err(Status::unauthenticated(format!(
                "{call} needs a client certificate of this cluster's CA (give the CLI \
                 --tls-dir DIR); without one only health checks and reflection are served"
            )));
        };
        if allowed(access, role, self.test_hooks) {
            return Ok(());
        }
        let remote = peer.map(|p| p.remote.to_string()).unwrap_or_default();
        tracing::warn!(%role, %remote, call, "admin call refused");
        let needs = match access {
            Access::Read => "a certificate of this cluster",
            Access::Internal => "a manager or operator certificate",
            Access::Operate | Access::Control => "an operator certificate",
            Access::Disturb if self.test_hooks => "a manager or operator certificate",
            Access::Disturb => {
                "a manager certificate (it is a step of TransferLeader); operators may call it \
                 only on a manager started with --unsafe-test-hooks"
            }
        };
        Err(Status::permission_denied(format!(
            "{call} needs {needs}; this client presented the certificate of {role}"
        )))
    }
}

/// Whether a call came forwarded by another manager (see [`Access::Control`]).
fn forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

/// What an operator call needs: a manager may make it only as a forward.
fn control_access<T>(request: &Request<T>) -> Access {
    if forwarded(request) {
        Access::Control
    } else {
        Access::Operate
    }
}

/// The table of the module documentation.
fn allowed(access: Access, role: &Role, test_hooks: bool) -> bool {
    match (access, role) {
        (Access::Control, Role::Manager(_)) => true,
        (Access::Disturb, Role::Operator(_)) => test_hooks,
        (_, Role::Operator(_)) => true,
        (Access::Read | Access::Internal | Access::Disturb, Role::Manager(_)) => true,
        (Access::Read, Role::Gateway(_)) => true,
        _ => false,
    }
}

/// An operator control's outcome as a gRPC answer.
fn operated<T>(result: Result<T, crate::operators::OperatorError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

/// A membership outcome as a gRPC answer.
fn answer<T>(result: Result<T, MembershipError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeReply>, Status> {
        self.authorize(&_request, "Describe", Access::Read)?;
        Ok(Response::new(self.membership.local_describe().await))
    }

    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<MembersReply>, Status> {
        self.authorize(&_request, "Members", Access::Read)?;
        answer(self.membership.members_view().await)
    }

    async fn init(&self, request: Request<InitRequest>) -> Result<Response<InitReply>, Status> {
        self.authorize(&request, "Init", Access::Operate)?;
        answer(self.membership.init(request.into_inner()).await)
    }

    async fn add_manager(
        &self,
        request: Request<AddManagerRequest>,
    ) -> Result<Response<AddManagerReply>, Status> {
        self.authorize(&request, "AddManager", Access::Operate)?;
        answer(self.membership.add_manager(request.into_inner()).await)
    }

    async fn remove_manager(
        &self,
        request: Request<RemoveManagerRequest>,
    ) -> Result<Response<RemoveManagerReply>, Status> {
        self.authorize(&request, "RemoveManager", Access::Operate)?;
        answer(self.membership.remove_manager(request.into_inner()).await)
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderReply>, Status> {
        self.authorize(&request, "TransferLeader", Access::Operate)?;
        answer(self.membership.transfer_leader(request.into_inner()).await)
    }

    async fn topic_info(
        &self,
        request: Request<TopicInfoRequest>,
    ) -> Result<Response<TopicInfoReply>, Status> {
        self.authorize(&request, "TopicInfo", Access::Internal)?;
        answer(self.membership.topic_info(request.into_inner()).await)
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickReply>, Status> {
        self.authorize(&request, "Kick", control_access(&request))?;
        let forwarded = forwarded(&request);
        operated(self.operators.kick(request.into_inner(), forwarded).await)
    }

    async fn add_ban(
        &self,
        request: Request<AddBanRequest>,
    ) -> Result<Response<AddBanReply>, Status> {
        self.authorize(&request, "AddBan", control_access(&request))?;
        let forwarded = forwarded(&request);
        operated(
            self.operators
                .add_ban(request.into_inner(), forwarded)
                .await,
        )
    }

    async fn remove_ban(
        &self,
        request: Request<RemoveBanRequest>,
    ) -> Result<Response<RemoveBanReply>, Status> {
        self.authorize(&request, "RemoveBan", control_access(&request))?;
        let forwarded = forwarded(&request);
        operated(
            self.operators
                .remove_ban(request.into_inner(), forwarded)
                .await,
        )
    }

    async fn list_bans(
        &self,
        request: Request<ListBansRequest>,
    ) -> Result<Response<ListBansReply>, Status> {
        self.authorize(&request, "ListBans", control_access(&request))?;
        let forwarded = forwarded(&request);
        operated(
            self.operators
                .list_bans(request.into_inner(), forwarded)
                .await,
        )
    }

    async fn set_rule(
        &self,
        request: Request<SetRuleRequest>,
    ) -> Result<Response<SetRuleReply>, Status> {
        self.authorize(&request, "SetRule", control_access(&request))?;
        let forwarded = forwarded(&request);
        operated(
            self.operators
                .set_rule(request.into_inner(), forwarded)
                .await,
        )
    }

    async fn list_rules(
        &self,
        request: Request<ListRulesRequest>,
    ) -> Result<Response<ListRulesReply>, Status> {
        self.authorize(&request, "ListRules", control_access(&request))?;
        let forwarded = forwarded(&request);
        operated(
            self.operators
                .list_rules(request.into_inner(), forwarded)
                .await,
        )
    }

    async fn stats(&self, request: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        self.authorize(&request, "Stats", Access::Operate)?;
        operated(self.operators.stats().await)
    }

    async fn connections(
        &self,
        request: Request<ConnectionsRequest>,
    ) -> Result<Response<ConnectionsReply>, Status> {
        self.authorize(&request, "Connections", Access::Operate)?;
        operated(self.operators.connections(request.into_inner()).await)
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        self.authorize(&request, "Join", Access::Internal)?;
        answer(self.membership.join(request.into_inner()).await)
    }

    async fn change_group(
        &self,
        request: Request<ChangeGroupRequest>,
    ) -> Result<Response<ChangeGroupReply>, Status> {
        self.authorize(&request, "ChangeGroup", Access::Internal)?;
        answer(
            self.membership
                .change_group_here(request.into_inner())
                .await,
        )
    }

    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignReply>, Status> {
        self.authorize(&request, "Campaign", Access::Disturb)?;
        answer(self.membership.campaign(request.into_inner()).await)
    }

    async fn hold_heartbeats(
        &self,
        request: Request<HoldHeartbeatsRequest>,
    ) -> Result<Response<HoldHeartbeatsReply>, Status> {
        self.authorize(&request, "HoldHeartbeats", Access::Disturb)?;
        answer(self.membership.hold_heartbeats(request.into_inner()).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_table_holds() {
        let op = Role::Operator("admin".into());
        let manager = Role::Manager(1);
        let gateway = Role::Gateway(1);
        for access in [Access::Read, Access::Internal, Access::Operate] {
            assert!(allowed(access, &op, false));
        }
        assert!(!allowed(Access::Disturb, &op, false));
        assert!(allowed(Access::Disturb, &op, true));
        assert!(allowed(Access::Read, &manager, false));
        assert!(allowed(Access::Internal, &manager, false));
        assert!(allowed(Access::Disturb, &manager, false));
        assert!(!allowed(Access::Operate, &manager, true));
        assert!(allowed(Access::Read, &gateway, false));
        // Operator controls: operators; managers only when forwarding.
        assert!(allowed(Access::Control, &op, false));
        assert!(allowed(Access::Control, &manager, false));
        assert!(!allowed(Access::Operate, &manager, false));
        for access in [
            Access::Internal,
            Access::Operate,
            Access::Disturb,
            Access::Control,
        ] {
            assert!(!allowed(access, &gateway, true));
        }
    }
}
