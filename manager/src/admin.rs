//! The admin gRPC API (`firetower.admin.v1.Admin`), plus gRPC health checking and server
//! reflection on the same port. A thin layer: every call is carried out by
//! [`Membership`](crate::membership) and its [`MembershipError`] becomes the gRPC status.

use firetower_proto::admin::admin_server::{Admin, AdminServer};
use firetower_proto::admin::*;
use tonic::{Request, Response, Status};

use crate::membership::{Membership, MembershipError};
use crate::node::Node;

/// The gRPC router with the admin API, health checking and reflection.
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
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(firetower_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let mut builder = tonic::transport::Server::builder();
    let router = builder
        .add_service(health_service)
        .add_service(AdminServer::new(AdminService {
            membership: Membership::new(node),
        }));
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
    membership: Membership,
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
        Ok(Response::new(self.membership.local_describe().await))
    }

    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<MembersReply>, Status> {
        answer(self.membership.members_view().await)
    }

    async fn init(&self, request: Request<InitRequest>) -> Result<Response<InitReply>, Status> {
        answer(self.membership.init(request.into_inner()).await)
    }

    async fn add_manager(
        &self,
        request: Request<AddManagerRequest>,
    ) -> Result<Response<AddManagerReply>, Status> {
        answer(self.membership.add_manager(request.into_inner()).await)
    }

    async fn remove_manager(
        &self,
        request: Request<RemoveManagerRequest>,
    ) -> Result<Response<RemoveManagerReply>, Status> {
        answer(self.membership.remove_manager(request.into_inner()).await)
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderReply>, Status> {
        answer(self.membership.transfer_leader(request.into_inner()).await)
    }

    async fn topic_info(
        &self,
        request: Request<TopicInfoRequest>,
    ) -> Result<Response<TopicInfoReply>, Status> {
        answer(self.membership.topic_info(request.into_inner()).await)
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        answer(self.membership.join(request.into_inner()).await)
    }

    async fn change_group(
        &self,
        request: Request<ChangeGroupRequest>,
    ) -> Result<Response<ChangeGroupReply>, Status> {
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
        answer(self.membership.campaign(request.into_inner()).await)
    }

    async fn hold_heartbeats(
        &self,
        request: Request<HoldHeartbeatsRequest>,
    ) -> Result<Response<HoldHeartbeatsReply>, Status> {
        answer(self.membership.hold_heartbeats(request.into_inner()).await)
    }
}
