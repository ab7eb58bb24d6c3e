//! Acceptance: operator controls end to end on the cluster side. Three secure manager
//! processes, two gateways' real cluster side (`ClusterUpstream`, in this process, with their
//! gateway certificates), and the CLI as an operator uses it:
//! - `ban add` reaches every gateway as a `ControlEvent::Bans` within a second, survives a
//!   restart of every manager, lapses after its TTL and goes with `ban remove`;
//! - `kick` reaches every gateway as a `ControlEvent::Kick`;
//! - what a gateway reports (`report_stats`) is what `cluster stats --json` shows, rates
//!   included;
//! - `cluster connections` is answered through the gateways' control channels;
//! - only operator certificates may call these, and bad input commits nothing.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use firetower_gateway::{
    ClusterOptions, ClusterUpstream, ConnectionInfo, ControlEvent, GatewayStats, Upstream,
};
use firetower_link::{LinkOptions, Role, Security};
use firetower_proto::admin::{add_ban_request, AddBanRequest, KickRequest, ListBansRequest};
use firetower_proto::{Ban, BanTarget};
use serde_json::Value;
use tokio::sync::mpsc;

/// What a test gateway saw on its control channel.
#[derive(Debug)]
enum Seen {
    Bans(Vec<Ban>),
    Kick(String, u64),
}

/// A gateway's cluster side with its control channel drained by a task: bans and kicks
/// forwarded to the test, connection queries answered with `conns` for user `u1`.
struct TestGateway {
    upstream: ClusterUpstream,
    seen: mpsc::UnboundedReceiver<Seen>,
    queries: Arc<AtomicU64>,
}

impl TestGateway {
    async fn connect(id: u64, cluster: &Cluster, conns: Vec<ConnectionInfo>) -> TestGateway {
        let security = Security::from_flags(Some(tls_dir()), false, &Role::Gateway(id))
            .expect("gateway certificate");
        let managers = cluster
            .managers
            .iter()
            .map(|m| m.quic.parse().expect("address"))
            .collect();
        let options = ClusterOptions {
            link: LinkOptions {
                security,
                ..LinkOptions::default()
            },
            ..ClusterOptions::default()
        };
        let (upstream, _deliveries) = ClusterUpstream::connect(id, managers, options)
            .await
            .expect("connect to the cluster");
        let mut controls = upstream.take_controls().expect("controls, once");
        assert!(upstream.take_controls().is_none());
        let (tx, seen) = mpsc::unbounded_channel();
        let queries = Arc::new(AtomicU64::new(0));
        let asked = queries.clone();
        tokio::spawn(async move {
            while let Some(event) = controls.recv().await {
                match event {
                    ControlEvent::Bans(bans) => {
                        let _ = tx.send(Seen::Bans(bans.to_vec()));
                    }
                    ControlEvent::Kick { user, at_ms } => {
                        let _ = tx.send(Seen::Kick(user, at_ms));
                    }
                    ControlEvent::Connections { user, reply } => {
                        asked.fetch_add(1, Ordering::Relaxed);
                        let found = if user == "u1" {
                            conns.clone()
                        } else {
                            Vec::new()
                        };
                        let _ = reply.send(found);
                    }
                    // No presence rule in these tests.
                    ControlEvent::Presence { .. } => {}
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while upstream.open_sessions() < 3 {
            assert!(
                Instant::now() < deadline,
                "gateway {id}: sessions never opened"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        TestGateway {
            upstream,
            seen,
            queries,
        }
    }

    /// Wait up to `within` for a ban list that satisfies `ok`.
    async fn bans_until(&mut self, within: Duration, ok: impl Fn(&[Ban]) -> bool) -> Vec<Ban> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(Seen::Bans(bans))) if ok(&bans) => return bans,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("no matching ban list within {within:?}"),
            }
        }
    }

    async fn kick_within(&mut self, within: Duration, user: &str) -> u64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(Seen::Kick(u, at_ms))) if u == user => return at_ms,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("no kick of {user} within {within:?}"),
            }
        }
    }
}

/// The CLI, off the async threads.
async fn run_cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args)
    })
    .await
    .expect("cli task")
}

async fn cli_json(args: &[&str]) -> Value {
    let out = run_cli(args.iter().map(|s| s.to_string()).collect()).await;
    assert!(
        out.status.success(),
        "firetower {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "firetower {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn has_ban(bans: &[Ban], id: u64) -> bool {
    bans.iter().any(|b| b.id == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_controls_reach_every_gateway_and_survive_restarts() {
    firetower_link::install_crypto_provider();
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start_formed(3))
        .await
        .expect("cluster");
    let admin = cluster.managers[1].admin.clone();
    let conn = ConnectionInfo {
        conn: "c-17".into(),
        remote: "203.0.113.9:50123".into(),
        since_ms: 1_700_000_000_000,
        topics: vec!["room.1".into(), "room.2".into()],
    };
    let mut g1 = TestGateway::connect(1, &cluster, vec![conn.clone()]).await;
    let mut g2 = TestGateway::connect(2, &cluster, Vec::new()).await;
    // Each gateway first learns the (empty) list from its sessions.
    g1.bans_until(Duration::from_secs(5), |b| b.is_empty())
        .await;

    // ban add: every gateway has it within a second of the commit.
    let ban = cli_json(&[
        "cluster", "ban", "add", "--admin", &admin, "--user", "u2", "--ttl", "1h", "--reason",
        "spam", "--json",
    ])
    .await;
    let committed = Instant::now();
    let id = ban["id"].as_u64().expect("ban id");
    assert_eq!(ban["target"]["kind"], "user", "{ban}");
    assert_eq!(ban["target"]["value"], "u2", "{ban}");
    assert_eq!(ban["reason"], "spam", "{ban}");
    let ttl = ban["expires_ms"].as_u64().unwrap() - ban["created_ms"].as_u64().unwrap();
    assert_eq!(ttl, 3_600_000, "{ban}");
    for g in [&mut g1, &mut g2] {
        let bans = g
            .bans_until(Duration::from_secs(1), |b| has_ban(b, id))
            .await;
        let got = bans.iter().find(|b| b.id == id).unwrap();
        assert_eq!(got.target, BanTarget::User("u2".into()));
        assert!(got.is_active(firetower_now_ms()));
    }
    assert!(committed.elapsed() < Duration::from_secs(1));
    // Through any manager, at once.
    for m in &cluster.managers {
        let list = cli_json(&["cluster", "ban", "list", "--admin", &m.admin, "--json"]).await;
        let ids: Vec<u64> = list["bans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, vec![id], "{list}");
    }
    // IP ranges and topic patterns too; one with a short TTL that lapses.
    let ip = cli_json(&[
        "cluster",
        "ban",
        "add",
        "--admin",
        &admin,
        "--ip",
        "10.1.2.3/8",
        "--json",
    ])
    .await;
    assert_eq!(ip["target"]["value"], "10.0.0.0/8", "{ip}");
    assert!(ip["expires_ms"].is_null(), "{ip}");
    let short = cli_json(&[
        "cluster", "ban", "add", "--admin", &admin, "--topic", "spam.*", "--ttl", "2s", "--json",
    ])
    .await;
    let short_id = short["id"].as_u64().unwrap();
    let bans = g2
        .bans_until(Duration::from_secs(2), |b| has_ban(b, short_id))
        .await;
    assert_eq!(bans.len(), 3);

    // kick: every gateway is told within a second.
    let out = run_cli(
        ["cluster", "kick", "--admin", &admin, "--user", "u1"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let asked = firetower_now_ms();
    for g in [&mut g1, &mut g2] {
        let at_ms = g.kick_within(Duration::from_secs(1), "u1").await;
        // Connections opened before the kick reached the gateway are closed.
        assert!(at_ms + 2_000 >= asked, "at_ms {at_ms}, asked {asked}");
    }

    // Stats: the figures a gateway reports, rates derived from its counters.
    let reporter = g1.upstream.clone();
    let report = tokio::spawn(async move {
        let mut messages = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            messages += 40; // 200 messages a second in, 400 out.
            reporter.report_stats(GatewayStats {
                connections: 12,
                subscriptions: 30,
                topics: 7,
                messages_in_total: messages,
                messages_out_total: 2 * messages,
                dropped_total: 5,
            });
        }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stats = cli_json(&["cluster", "stats", "--admin", &admin, "--json"]).await;
    let gw = stats["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == 1)
        .unwrap_or_else(|| panic!("gateway 1 missing: {stats}"))
        .clone();
    assert_eq!(gw["connections"], 12, "{stats}");
    assert_eq!(gw["subscriptions"], 30, "{stats}");
    assert_eq!(gw["topics"], 7, "{stats}");
    assert_eq!(gw["dropped_total"], 5, "{stats}");
    let rate_in = gw["messages_in_per_s"].as_f64().unwrap();
    let rate_out = gw["messages_out_per_s"].as_f64().unwrap();
    assert!((rate_in - 200.0).abs() <= 20.0, "in {rate_in}: {stats}");
    assert!((rate_out - 400.0).abs() <= 40.0, "out {rate_out}: {stats}");
    let groups = stats["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 8, "{stats}");
    assert!(groups
        .iter()
        .all(|g| g["commits_per_s"].is_number() && g["topics"].is_number()));
    assert_eq!(groups[0]["id"], 0);
    assert_eq!(stats["totals"]["connections"], 12, "{stats}");
    report.abort();

    // Connections: asked of both gateways through their sessions; gateway 1 has one.
    let found = cli_json(&[
        "cluster",
        "connections",
        "--admin",
        &admin,
        "--user",
        "u1",
        "--json",
    ])
    .await;
    assert_eq!(found["unanswered"], serde_json::json!([]), "{found}");
    let conns = found["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{found}");
    assert_eq!(conns[0]["gateway"], 1);
    assert_eq!(conns[0]["remote"], "203.0.113.9:50123");
    assert_eq!(conns[0]["since"], 1_700_000_000_000u64);
    assert_eq!(conns[0]["topics"], serde_json::json!(["room.1", "room.2"]));
    assert!(g1.queries.load(Ordering::Relaxed) >= 1);
    assert!(g2.queries.load(Ordering::Relaxed) >= 1);

    // The short ban lapsed: gone from `ban list`, still listed with --all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let list = cli_json(&["cluster", "ban", "list", "--admin", &admin, "--json"]).await;
    assert_eq!(list["bans"].as_array().unwrap().len(), 2, "{list}");
    let all = cli_json(&[
        "cluster", "ban", "list", "--admin", &admin, "--all", "--json",
    ])
    .await;
    assert_eq!(all["bans"].as_array().unwrap().len(), 3, "{all}");

    // Restart every manager: the bans are still there, and the gateways get them again.
    tokio::task::block_in_place(|| {
        for m in &mut cluster.managers {
            m.terminate();
        }
        for m in &mut cluster.managers {
            m.start();
        }
        cluster.wait_formed();
    });
    let list = cli_json(&["cluster", "ban", "list", "--admin", &admin, "--json"]).await;
    let ids: Vec<u64> = list["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_u64().unwrap())
        .collect();
    assert!(ids.contains(&id), "lost across the restart: {list}");
    for g in [&mut g1, &mut g2] {
        // The sessions reopen; the list they bring has the ban (a restarted manager counts
        // the same version, so a gateway that kept its list may see no new one: drain what
        // came and check the newest).
        let deadline = Instant::now() + Duration::from_secs(20);
        while g.upstream.open_sessions() < 3 {
            assert!(Instant::now() < deadline, "sessions did not reopen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while let Ok(seen) = g.seen.try_recv() {
            if let Seen::Bans(bans) = seen {
                assert!(
                    has_ban(&bans, id),
                    "a list without the ban after the restart"
                );
            }
        }
    }

    // ban remove: gone from every gateway within a second.
    let out = run_cli(
        [
            "cluster",
            "ban",
            "remove",
            "--admin",
            &admin,
            &id.to_string(),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for g in [&mut g1, &mut g2] {
        g.bans_until(Duration::from_secs(1), |b| !has_ban(b, id) && b.len() == 2)
            .await;
    }
    // Removing it again: not found, exit 1.
    let out = run_cli(
        [
            "cluster",
            "ban",
            "remove",
            "--admin",
            &admin,
            &id.to_string(),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("there is no ban {id}")));

    // Only operators: a gateway's or a manager's certificate is refused before anything
    // changes, and so is bad input from an operator.
    let version = |bans: firetower_proto::admin::ListBansReply| bans.version;
    let operator = Security::from_flags(Some(tls_dir()), false, &Role::Operator("admin".into()))
        .expect("operator certificate");
    let mut op = firetower_manager::connect_admin(&admin, &operator, Duration::from_secs(5))
        .await
        .expect("connect as operator");
    let before = version(
        op.list_bans(ListBansRequest {
            include_lapsed: true,
        })
        .await
        .expect("list")
        .into_inner(),
    );
    for role in [Role::Gateway(1), Role::Manager(2)] {
        let security = Security::from_flags(Some(tls_dir()), false, &role).expect("certificate");
        let mut client =
            firetower_manager::connect_admin(&admin, &security, Duration::from_secs(5))
                .await
                .expect("connect");
        let refused = client
            .add_ban(AddBanRequest {
                target: Some(add_ban_request::Target::User("u9".into())),
                ..Default::default()
            })
            .await
            .expect_err("not an operator");
        assert_eq!(
            refused.code(),
            tonic::Code::PermissionDenied,
            "{role}: {refused}"
        );
        assert!(
            refused.message().contains("an operator certificate"),
            "{refused}"
        );
        let refused = client
            .kick(KickRequest {
                user: "u1".into(),
                at_ms: 0,
            })
            .await
            .expect_err("not an operator");
        assert_eq!(
            refused.code(),
            tonic::Code::PermissionDenied,
            "{role}: {refused}"
        );
    }
    for (target, says) in [
        (
            add_ban_request::Target::Ip("10.0.0.0/33".into()),
            "prefix /33",
        ),
        (
            add_ban_request::Target::Ip("300.1.1.1".into()),
            "not an IP address range",
        ),
        (add_ban_request::Target::Topic("a*b".into()), ""),
        (add_ban_request::Target::User(String::new()), "empty"),
    ] {
        let refused = op
            .add_ban(AddBanRequest {
                target: Some(target),
                ..Default::default()
            })
            .await
            .expect_err("bad input");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
        assert!(refused.message().contains(says), "{refused}");
    }
    let refused = op
        .add_ban(AddBanRequest::default())
        .await
        .expect_err("no target");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let after = version(
        op.list_bans(ListBansRequest {
            include_lapsed: true,
        })
        .await
        .expect("list")
        .into_inner(),
    );
    assert_eq!(before, after, "a refused ban changed the list");
    g1.upstream.close();
    g2.upstream.close();
}

fn firetower_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
