//! The admin port serves gRPC health checking and server reflection beside the admin API.

mod common;

use common::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[test]
fn health_and_reflection_answer() {
    let cluster = Cluster::start(1);
    let admin = cluster.managers[0].admin.clone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut health = HealthClient::new(channel.clone());
        for service in ["", "firetower.admin.v1.Admin"] {
            let status = health
                .check(HealthCheckRequest {
                    service: service.to_string(),
                })
                .await
                .expect("health check")
                .into_inner()
                .status;
            assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
        }
        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = reflection
            .server_reflection_info(tokio_stream_once(request))
            .await
            .expect("reflection")
            .into_inner();
        let reply = stream.message().await.expect("reply").expect("one reply");
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("unexpected reflection reply {reply:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.iter().any(|n| n == "firetower.admin.v1.Admin"),
            "{names:?}"
        );
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{names:?}"
        );
    });
}

fn tokio_stream_once<T: Send + 'static>(item: T) -> impl futures::Stream<Item = T> + Send {
    futures::stream::once(async move { item })
}

/// A TLS channel to `admin` trusting the shared test CA, presenting `identity` if given.
async fn tls_channel(admin: &str, identity: Option<&str>) -> tonic::transport::Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let dir = tls_dir();
    let ca = std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem");
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("firetower");
    if let Some(stem) = identity {
        let cert = std::fs::read_to_string(dir.join(format!("{stem}.pem"))).expect("cert");
        let key = std::fs::read_to_string(dir.join(format!("{stem}-key.pem"))).expect("key");
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    tonic::transport::Endpoint::from_shared(format!("https://{admin}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .expect("connect over TLS")
}

#[test]
fn admin_calls_are_authorized_by_certificate_role() {
    use firetower_proto::admin::admin_client::AdminClient;
    use firetower_proto::admin::{
        CampaignRequest, InitRequest, JoinRequest, MembersRequest, RemoveManagerRequest,
    };
    use tonic::Code;
    let cluster = Cluster::start_formed(1);
    let admin = cluster.managers[0].admin.clone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // Plaintext and TLS without a client certificate: health yes, admin calls no.
        let plain = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("plaintext connect");
        let anonymous = tls_channel(&admin, None).await;
        for channel in [plain, anonymous] {
            let mut health = HealthClient::new(channel.clone());
            let status = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("health is open to anyone")
                .into_inner()
                .status;
            assert_eq!(status, ServingStatus::Serving as i32);
            let err = AdminClient::new(channel)
                .members(MembersRequest {})
                .await
                .expect_err("members without a certificate");
            assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
            assert!(err.message().contains("certificate"), "{}", err.message());
        }
        // A gateway may read the membership and nothing else.
        let mut gateway = AdminClient::new(tls_channel(&admin, Some("gateway-1")).await);
        gateway
            .members(MembersRequest {})
            .await
            .expect("a gateway reads the membership");
        let err = gateway
            .remove_manager(RemoveManagerRequest { id: 1 })
            .await
            .expect_err("a gateway removes a manager");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("operator"), "{}", err.message());
        let err = gateway
            .join(JoinRequest::default())
            .await
            .expect_err("a gateway sends Join");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        // A manager makes internal calls, but does not operate the cluster.
        let mut manager = AdminClient::new(tls_channel(&admin, Some("manager-2")).await);
        let err = manager
            .init(InitRequest::default())
            .await
            .expect_err("a manager certificate runs Init");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        // The operator operates, but Campaign needs --unsafe-test-hooks.
        let mut operator = AdminClient::new(tls_channel(&admin, Some("operator-admin")).await);
        operator
            .members(MembersRequest {})
            .await
            .expect("the operator reads the membership");
        let err = operator
            .campaign(CampaignRequest { group: 0 })
            .await
            .expect_err("Campaign without --unsafe-test-hooks");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(
            err.message().contains("--unsafe-test-hooks"),
            "{}",
            err.message()
        );
    });
    // Nothing changed: still one manager, every group led.
    let members = cluster.members().expect("members");
    assert_eq!(members.managers.len(), 1);
    assert!(all_groups_led(&members, &[1], &[1]));
}

#[test]
fn reflection_answers_v1alpha_too() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest as AlphaMessage;
    let cluster = Cluster::start(1);
    let admin = cluster.managers[0].admin.clone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let request = AlphaMessage {
            host: String::new(),
            message_request: Some(AlphaRequest::ListServices(String::new())),
        };
        let mut stream = Alpha::new(channel)
            .server_reflection_info(tokio_stream_once(request))
            .await
            .expect("v1alpha reflection")
            .into_inner();
        let reply = stream.message().await.expect("reply").expect("one reply");
        let Some(AlphaResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("unexpected reflection reply {reply:?}");
        };
        assert!(
            list.service
                .iter()
                .any(|s| s.name == "firetower.admin.v1.Admin"),
            "{list:?}"
        );
    });
}
