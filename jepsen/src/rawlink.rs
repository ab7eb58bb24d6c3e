//! A deliberately simple manager-link client for the workloads: one attempt per manager,
//! NotLeader hints followed, and every failure classified as definite (`fail`: the request
//! certainly had no effect) or indeterminate (`info`). The production [`LinkClient`] retries
//! on its own, which hides exactly what a history must record.
//!
//! Reads go to a random manager first (not the cached leader), so that a manager that
//! answers reads it should not (the `--unsafe-stale-reads` self-test) gets asked.
//!
//! [`LinkClient`]: firetower_link::LinkClient

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use firetower_link::{decode_frame, encode_frame, FrameError, StreamError, MAX_LINK_FRAME_BYTES};
use firetower_proto::group_of;
use firetower_proto::link::{gateway_reply, gateway_request, GatewayReply, GatewayRequest};
use rand::Rng;

/// Why a [`RawLink`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RawLinkError {
    /// The QUIC endpoint could not be created.
    #[error("QUIC endpoint: {0}")]
    Endpoint(#[source] firetower_link::TransportError),
    /// A gateway certificate could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[source] firetower_link::TlsError),
    /// The gateway sessions the workload needs could not be opened.
    #[error("gateway session: {0}")]
    Session(#[source] firetower_link::LinkError),
    /// No manager answered the routing request in time.
    #[error("no manager returned the routing table within {0:?}")]
    NoRouting(Duration),
}

/// Why one request to one manager got no answer, after it was sent.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    /// The request could not be written.
    #[error("{0}")]
    Write(#[from] quinn::WriteError),
    /// The stream was already closed.
    #[error("{0}")]
    Finish(#[from] quinn::ClosedStream),
    /// The reply could not be read.
    #[error("{0}")]
    Read(#[from] quinn::ReadToEndError),
    /// The reply is not a reply frame.
    #[error("{0}")]
    Decode(#[from] FrameError),
}

/// How long [`RawLink::new`] waits for the routing table.
const ROUTING_WAIT: Duration = Duration::from_secs(30);

/// The outcome of one logical request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Answered.
    Ok(gateway_reply::Result),
    /// Certainly not applied.
    Fail(String),
    /// May or may not have been applied.
    Info(String),
}

/// A link client for one worker process (shared by its clients).
#[derive(Debug)]
pub struct RawLink {
    /// Per gateway id: the endpoint presenting that gateway's certificate (one shared
    /// endpoint in insecure mode).
    endpoints: HashMap<u64, quinn::Endpoint>,
    managers: Vec<SocketAddr>,
    groups: u32,
    connections: Mutex<HashMap<(u64, SocketAddr), quinn::Connection>>,
    leaders: Mutex<HashMap<u32, SocketAddr>>,
    /// Give up on a request after this long.
    pub deadline: Duration,
}

enum Attempt {
    /// The request never left (no connection, no stream): definite.
    NotSent(String),
    /// Sent, no answer: indeterminate.
    Lost(String),
    Reply(GatewayReply),
}

impl RawLink {
    /// Connect lazily to `managers`; `groups` is learned from the first manager that answers.
    /// `gateways` ids (1..=gateways) are acted as; with `tls_dir` each presents its own
    /// certificate (`gateway-<id>.pem`), since a certificate pins one gateway id.
    pub async fn new(
        managers: Vec<SocketAddr>,
        deadline: Duration,
        tls_dir: Option<&std::path::Path>,
        gateways: u64,
    ) -> Result<RawLink, RawLinkError> {
        let bind = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0));
        let mut endpoints = HashMap::new();
        let shared = match tls_dir {
            None => Some(
                firetower_link::client_endpoint(bind, &firetower_link::Security::Insecure)
                    .map_err(RawLinkError::Endpoint)?,
            ),
            Some(_) => None,
        };
        for gateway in 1..=gateways.max(1) {
            let endpoint = match (&shared, tls_dir) {
                (Some(e), _) => e.clone(),
                (None, dir) => {
                    let security = firetower_link::Security::from_flags(
                        dir,
                        false,
                        &firetower_link::Role::Gateway(gateway),
                    )
                    .map_err(RawLinkError::Tls)?;
                    firetower_link::client_endpoint(bind, &security)
                        .map_err(RawLinkError::Endpoint)?
                }
            };
            endpoints.insert(gateway, endpoint);
        }
        let mut link = RawLink {
            endpoints,
            managers,
            groups: 0,
            connections: Mutex::new(HashMap::new()),
            leaders: Mutex::new(HashMap::new()),
            deadline,
        };
        let start = tokio::time::Instant::now();
        while link.groups == 0 {
            for addr in link.managers.clone() {
                let req = GatewayRequest {
                    gateway: 1,
                    op: Some(gateway_request::Op::GetRouting(Default::default())),
                };
                if let Attempt::Reply(GatewayReply {
                    result: Some(gateway_reply::Result::Routing(r)),
                }) = link.send(addr, &req).await
                {
                    if r.groups > 0 {
                        link.groups = r.groups;
                        break;
                    }
                }
            }
            if start.elapsed() > ROUTING_WAIT {
                return Err(RawLinkError::NoRouting(ROUTING_WAIT));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(link)
    }

    /// Send `op` for `topic` as `gateway`. `read` picks a random first manager.
    pub async fn request(
        &self,
        gateway: u64,
        topic: &str,
        op: gateway_request::Op,
        read: bool,
    ) -> Outcome {
        let group = group_of(topic, self.groups);
        let request = GatewayRequest {
            gateway,
            op: Some(op),
        };
        let started = tokio::time::Instant::now();
        let mut target = if read {
            self.random_manager()
        } else {
            self.leader(group).unwrap_or_else(|| self.random_manager())
        };
        let mut last = String::from("no attempt");
        while started.elapsed() < self.deadline {
            match self.send(target, &request).await {
                Attempt::Reply(reply) => match reply.result {
                    Some(gateway_reply::Result::NotLeader(n)) => {
                        last = format!("{target} does not lead group {group}");
                        match n.leader_quic.parse::<SocketAddr>() {
                            Ok(hint) if hint != target => {
                                self.set_leader(group, Some(hint));
                                target = hint;
                            }
                            _ => {
                                self.set_leader(group, None);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                target = self.random_manager();
                            }
                        }
                    }
                    Some(gateway_reply::Result::Failure(f)) => {
                        let message = format!("{target}: {}: {}", f.code, f.message);
                        return match f.code.as_str() {
                            "timeout" | "unavailable" | "internal" => Outcome::Info(message),
                            _ => Outcome::Fail(message),
                        };
                    }
                    Some(result) => {
                        if !read {
                            self.set_leader(group, Some(target));
                        }
                        return Outcome::Ok(result);
                    }
                    None => return Outcome::Info(format!("{target}: empty reply")),
                },
                Attempt::NotSent(e) => {
                    last = format!("{target}: {e}");
                    self.set_leader(group, None);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    target = self.random_manager();
                }
                Attempt::Lost(e) => return Outcome::Info(format!("{target}: {e}")),
            }
        }
        Outcome::Fail(format!("gave up after {:?}: {last}", self.deadline))
    }

    fn random_manager(&self) -> SocketAddr {
        let i = rand::rng().random_range(0..self.managers.len().max(1));
        self.managers[i.min(self.managers.len().saturating_sub(1))]
    }

    fn leader(&self, group: u32) -> Option<SocketAddr> {
        self.leaders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .copied()
    }

    fn set_leader(&self, group: u32, leader: Option<SocketAddr>) {
        let mut l = self.leaders.lock().unwrap_or_else(|e| e.into_inner());
        match leader {
            Some(a) => l.insert(group, a),
            None => l.remove(&group),
        };
    }

    fn forget(&self, addr: SocketAddr) {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, a), _| *a != addr);
    }

    async fn connection(
        &self,
        gateway: u64,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, String> {
        let cached = self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(gateway, addr))
            .cloned();
        if let Some(c) = cached {
            if c.close_reason().is_none() {
                return Ok(c);
            }
        }
        let Some(endpoint) = self.endpoints.get(&gateway) else {
            return Err(format!("no endpoint for gateway {gateway}"));
        };
        let connecting = endpoint
            .connect(addr, "firetower")
            .map_err(|e| StreamError::from(e).to_string())?;
        let conn = tokio::time::timeout(Duration::from_millis(1_000), connecting)
            .await
            .map_err(|_| StreamError::HandshakeTimeout.to_string())?
            .map_err(|e| StreamError::from(e).to_string())?;
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((gateway, addr), conn.clone());
        Ok(conn)
    }

    async fn send(&self, addr: SocketAddr, request: &GatewayRequest) -> Attempt {
        let conn = match self.connection(request.gateway, addr).await {
            Ok(c) => c,
            Err(e) => return Attempt::NotSent(e),
        };
        let (mut send, mut recv) =
            match tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    self.forget(addr);
                    return Attempt::NotSent(e.to_string());
                }
                Err(_) => {
                    self.forget(addr);
                    return Attempt::NotSent("no stream credit in time".into());
                }
            };
        let exchange = async {
            send.write_all(&encode_frame(request)).await?;
            send.finish()?;
            let bytes = recv.read_to_end(MAX_LINK_FRAME_BYTES + 4).await?;
            Ok::<_, ExchangeError>(decode_frame::<GatewayReply>(&bytes)?)
        };
        match tokio::time::timeout(self.deadline, exchange).await {
            Ok(Ok(reply)) => Attempt::Reply(reply),
            Ok(Err(e)) => {
                self.forget(addr);
                Attempt::Lost(e.to_string())
            }
            Err(_) => {
                self.forget(addr);
                Attempt::Lost("no reply in time".into())
            }
        }
    }
}
