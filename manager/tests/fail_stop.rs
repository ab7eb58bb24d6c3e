//! Fail-stop storage: a manager whose write-ahead log fails (an fdatasync returns EIO, made so
//! by the store's fault-injection seam) acknowledges nothing more, reports NOT_SERVING on gRPC
//! health and 503 on `/healthz` with the reason, and `Manager::fatal` resolves with the error.
//! A single-manager cluster in this process on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use firetower_manager::{connect_admin, FatalError, Manager, ManagerConfig, RaftTuning};
use firetower_proto::admin::InitRequest;
use firetower_proto::GroupId;
use firetower_store::faults::{inject_fault, Fault, EIO};
use firetower_store::{Command, WalError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The admin service's name in gRPC health.
const ADMIN_SERVICE: &str = "firetower.admin.v1.Admin";

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free UDP port")
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free TCP port")
            .port()
    }
}

async fn start_single(dir: &std::path::Path) -> Manager {
    let config = ManagerConfig {
        id: 1,
        quic: SocketAddr::from(([127, 0, 0, 1], free_port(true))),
        admin: SocketAddr::from(([127, 0, 0, 1], free_port(false))),
        data_dir: dir.to_path_buf(),
        cluster_id: None,
        raft: RaftTuning::default(),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        unsafe_stale_reads: false,
        unsafe_stale_leadership: false,
        tls: firetower_manager::TlsSettings {
            dir: None,
            insecure: true,
        },
        unsafe_test_hooks: false,
    };
    let manager = Manager::start(config).await.expect("manager starts");
    let mut admin = connect_admin(
        &manager.node().admin,
        &firetower_link::Security::Insecure,
        Duration::from_secs(10),
    )
    .await
    .expect("admin API answers");
    admin
        .init(InitRequest {
            members: Vec::new(),
            groups: 2,
        })
        .await
        .expect("cluster init");
    assert!(
        manager
            .wait_for_leaders(Duration::from_secs(10))
            .await
            .is_empty(),
        "a group elected no leader"
    );
    manager
}

async fn health_client(manager: &Manager) -> HealthClient<tonic::transport::Channel> {
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", manager.node().admin))
            .unwrap()
            .connect()
            .await
            .expect("admin port answers");
    HealthClient::new(channel)
}

async fn status(health: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    health
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("health check answers")
        .into_inner()
        .status
}

/// `GET /healthz`: the status code and the body.
async fn healthz(addr: SocketAddr) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8(response).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (code, body.to_string())
}

async fn write(manager: &Manager, group: u32, topic: &str) -> bool {
    let raft = manager.raft(GroupId(group)).expect("group hosted here");
    let command = Command::Subscribe {
        topic: topic.to_string(),
        gateway: 1,
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), raft.client_write(command)).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_turns_health_not_serving_and_resolves_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let manager = start_single(dir.path()).await;
    let metrics = manager.metrics_addr().expect("metrics configured");
    let mut health = health_client(&manager).await;
    assert_eq!(status(&mut health, "").await, ServingStatus::Serving as i32);
    assert_eq!(
        status(&mut health, ADMIN_SERVICE).await,
        ServingStatus::Serving as i32
    );
    assert_eq!(healthz(metrics).await.0, 200);
    assert!(
        write(&manager, 0, "before").await,
        "a healthy manager commits"
    );

    inject_fault(dir.path(), Fault::Sync { errno: EIO });
    assert!(
        !write(&manager, 0, "after").await,
        "a write whose fdatasync failed was acknowledged"
    );
    let fatal = tokio::time::timeout(Duration::from_secs(5), manager.fatal())
        .await
        .expect("fatal() resolves after the log failed");
    match &fatal {
        FatalError::Storage(wal) => match &**wal {
            WalError::Io { path, source } => {
                assert_eq!(source.raw_os_error(), Some(EIO), "{fatal}");
                assert!(path.starts_with(dir.path().join("wal")), "{fatal}");
            }
            other => panic!("not the I/O error of the log: {other}"),
        },
        other => panic!("not a storage failure: {other}"),
    }
    let reason = fatal.to_string();
    assert!(reason.contains("00000001.log"), "names the file: {reason}");
    assert!(
        reason.contains("os error 5"),
        "names the OS error: {reason}"
    );
    assert_eq!(FatalError::EXIT_CODE, 3);

    // The other group shares the log: nothing is acknowledged there either.
    assert!(!write(&manager, 1, "other-group").await);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let overall = status(&mut health, "").await;
        let admin = status(&mut health, ADMIN_SERVICE).await;
        if overall == ServingStatus::NotServing as i32 && admin == ServingStatus::NotServing as i32
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gRPC health still reports {overall} / {admin}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = healthz(metrics).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("os error 5"),
        "/healthz gives the reason: {body}"
    );
    // Still resolves for a late caller, with the same first failure.
    let again = tokio::time::timeout(Duration::from_secs(1), manager.fatal())
        .await
        .expect("fatal() resolves again");
    assert_eq!(again.to_string(), reason);

    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_is_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let manager = start_single(dir.path()).await;
    assert!(write(&manager, 0, "t").await);
    let fatal = manager.fatal();
    manager.shutdown().await;
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), fatal)
            .await
            .is_err(),
        "a deliberate shutdown was reported as fatal"
    );
}
