//! An in-memory network for tests: quinn endpoints on virtual addresses, joined by one
//! in-process switch that can cut, partition, isolate, delay and heal links (raft-rs's
//! `harness/src/network.rs`, openraft's test router), without root and without a socket.
//!
//! ```text
//!   Endpoint(10.0.0.1:6666) ─ MemSocket ─┐                 ┌─ MemSocket ─ Endpoint(10.0.0.2:6666)
//!                                        ├─ MemNet switch ─┤
//!   Endpoint(10.0.0.3:6666) ─ MemSocket ─┘  cuts, isolated, └─ ...
//!                                           delays
//! ```
//!
//! Datagrams to an address nobody bound, across a cut or from or to an isolated address are
//! dropped, as a partitioned network drops them; QUIC then behaves as over real UDP (its
//! keep-alives go unanswered and connections time out). [`MemNet::heal`] lifts every fault.
//!
//! Entry points: [`MemNet::new`], then [`MemNet::endpoint`] (a manager endpoint) or
//! [`MemNet::client_endpoint`] (a gateway endpoint) per virtual address, or [`MemNet::bind`] for
//! a bare [`quinn::AsyncUdpSocket`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Endpoint, UdpPoller};

use crate::endpoint::{client_endpoint_on, make_endpoint_on, TransportError};
use crate::tls::Security;

/// Datagrams a socket holds before further ones are dropped (a full UDP receive buffer).
const QUEUE_DATAGRAMS: usize = 4096;

/// The shared switch. Cheap to clone: clones are the same network.
#[derive(Clone, Default)]
pub struct MemNet {
    switch: Arc<Mutex<Switch>>,
}

impl fmt::Debug for MemNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("MemNet")
            .field("bound", &s.ports.len())
            .field("cuts", &s.cuts)
            .field("isolated", &s.isolated)
            .field("delays", &s.delays)
            .finish()
    }
}

#[derive(Default)]
struct Switch {
    ports: HashMap<SocketAddr, Weak<Port>>,
    /// Unordered pairs, stored with the smaller address first.
    cuts: HashSet<(SocketAddr, SocketAddr)>,
    isolated: HashSet<SocketAddr>,
    delays: HashMap<(SocketAddr, SocketAddr), Duration>,
}

/// The receive side of one bound address.
#[derive(Default)]
struct Port {
    inbox: Mutex<Inbox>,
}

#[derive(Default)]
struct Inbox {
    datagrams: VecDeque<(SocketAddr, Vec<u8>)>,
    waker: Option<Waker>,
}

impl Port {
    fn deliver(&self, from: SocketAddr, datagram: Vec<u8>) {
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        if inbox.datagrams.len() >= QUEUE_DATAGRAMS {
            return;
        }
        inbox.datagrams.push_back((from, datagram));
        if let Some(waker) = inbox.waker.take() {
            waker.wake();
        }
    }
}

fn pair(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl MemNet {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// A socket bound to the virtual address `addr`; fails with `AddrInUse` while another
    /// socket holds it.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<Arc<MemSocket>> {
        let mut s = self.lock();
        if s.ports.get(&addr).is_some_and(|p| p.strong_count() > 0) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is already bound on this in-memory network"),
            ));
        }
        let port = Arc::new(Port::default());
        s.ports.insert(addr, Arc::downgrade(&port));
        Ok(Arc::new(MemSocket {
            addr,
            net: self.clone(),
            port,
        }))
    }

    /// A manager endpoint (server and client, both ALPNs) at `addr`, as
    /// [`crate::make_endpoint`] makes on a real socket.
    pub fn endpoint(&self, addr: SocketAddr) -> Result<Endpoint, TransportError> {
        self.endpoint_with(addr, &Security::Insecure)
    }

    /// Like [`MemNet::endpoint`], secured with `security` (mutual TLS, say).
    pub fn endpoint_with(
        &self,
        addr: SocketAddr,
        security: &Security,
    ) -> Result<Endpoint, TransportError> {
        let socket = self
            .bind(addr)
            .map_err(|source| TransportError::Bind { addr, source })?;
        make_endpoint_on(socket, None, security)
    }

    /// A gateway endpoint (client only, [`crate::ALPN_LINK`], insecure) at `addr`, as
    /// [`crate::client_endpoint`] makes on a real socket.
    pub fn client_endpoint(&self, addr: SocketAddr) -> Result<Endpoint, TransportError> {
        self.client_endpoint_with(addr, &Security::Insecure)
    }

    /// Like [`MemNet::client_endpoint`], secured with `security`.
    pub fn client_endpoint_with(
        &self,
        addr: SocketAddr,
        security: &Security,
    ) -> Result<Endpoint, TransportError> {
        let socket = self
            .bind(addr)
            .map_err(|source| TransportError::Bind { addr, source })?;
        client_endpoint_on(socket, security)
    }

    /// Drop every datagram between `a` and `b`, both ways.
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        self.lock().cuts.insert(pair(a, b));
    }

    /// Split the network: drop every datagram between a member of `side_a` and a member of
    /// `side_b`, both ways. Links within each side stay up (unlike [`MemNet::isolate`]).
    pub fn partition(&self, side_a: &[SocketAddr], side_b: &[SocketAddr]) {
        let mut s = self.lock();
        for a in side_a {
            for b in side_b.iter().filter(|b| *b != a) {
                s.cuts.insert(pair(*a, *b));
            }
        }
    }

    /// Drop every datagram from or to `a`.
    pub fn isolate(&self, a: SocketAddr) {
        self.lock().isolated.insert(a);
    }

    /// Hold every datagram between `a` and `b` (both ways) for `delay` before delivering it.
    pub fn delay(&self, a: SocketAddr, b: SocketAddr, delay: Duration) {
        self.lock().delays.insert(pair(a, b), delay);
    }

    /// Lift every cut, isolation and delay.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.cuts.clear();
        s.isolated.clear();
        s.delays.clear();
    }

    fn lock(&self) -> MutexGuard<'_, Switch> {
        self.switch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Route one datagram: drop it, deliver it now, or deliver it after a delay.
    fn route(&self, from: SocketAddr, to: SocketAddr, datagram: Vec<u8>) {
        let (port, delay) = {
            let s = self.lock();
            if s.isolated.contains(&from) || s.isolated.contains(&to) {
                return;
            }
            if s.cuts.contains(&pair(from, to)) {
                return;
            }
            let Some(port) = s.ports.get(&to).and_then(Weak::upgrade) else {
                return;
            };
            (port, s.delays.get(&pair(from, to)).copied())
        };
        match (delay, tokio::runtime::Handle::try_current()) {
            (Some(d), Ok(runtime)) if !d.is_zero() => {
                runtime.spawn(async move {
                    tokio::time::sleep(d).await;
                    port.deliver(from, datagram);
                });
            }
            _ => port.deliver(from, datagram),
        }
    }
}

/// One bound virtual address: quinn's [`AsyncUdpSocket`] over the [`MemNet`] switch.
pub struct MemSocket {
    addr: SocketAddr,
    net: MemNet,
    port: Arc<Port>,
}

impl fmt::Debug for MemSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemSocket")
            .field("addr", &self.addr)
            .finish()
    }
}

impl AsyncUdpSocket for MemSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // Segmented sends (GSO) are split back into datagrams, as the kernel would.
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for datagram in transmit.contents.chunks(size) {
            self.net
                .route(self.addr, transmit.destination, datagram.to_vec());
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut inbox = self.port.inbox.lock().unwrap_or_else(|e| e.into_inner());
        let mut filled = 0;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
            let Some((from, datagram)) = inbox.datagrams.pop_front() else {
                break;
            };
            // A datagram larger than the buffer is truncated, as recvmsg truncates it.
            let len = datagram.len().min(buf.len());
            buf[..len].copy_from_slice(&datagram[..len]);
            *meta = RecvMeta {
                addr: from,
                len,
                stride: len,
                ecn: None,
                dst_ip: Some(self.addr.ip()),
            };
            filled += 1;
        }
        if filled > 0 {
            return Poll::Ready(Ok(filled));
        }
        inbox.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// The switch never pushes back: a send either lands in a queue or is dropped.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{client_config, ALPN_RAFT};
    use crate::tls::SERVER_NAME;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], 6666))
    }

    /// A server at `at` that echoes every stream back, forever.
    fn echo_server(net: &MemNet, at: SocketAddr) -> Endpoint {
        let server = net.endpoint(at).unwrap();
        let accepting = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            if let Ok(buf) = recv.read_to_end(1 << 16).await {
                                let _ = send.write_all(&buf).await;
                                let _ = send.finish();
                            }
                        });
                    }
                });
            }
        });
        server
    }

    async fn echo(conn: &quinn::Connection, data: &[u8]) -> io::Result<Vec<u8>> {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(data).await?;
        send.finish()?;
        recv.read_to_end(1 << 16).await.map_err(io::Error::other)
    }

    async fn echo_within(conn: &quinn::Connection, data: &[u8], limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, echo(conn, data)).await,
            Ok(Ok(back)) if back == data
        )
    }

    #[tokio::test]
    async fn two_endpoints_talk_and_a_cut_stops_them_until_healed() {
        let net = MemNet::new();
        let _server = echo_server(&net, addr(1));
        let client = net.endpoint(addr(2)).unwrap();
        let conn = client
            .connect_with(
                client_config(ALPN_RAFT, &Security::Insecure).unwrap(),
                addr(1),
                SERVER_NAME,
            )
            .unwrap()
            .await
            .unwrap();
        assert_eq!(conn.remote_address(), addr(1));
        assert!(echo_within(&conn, b"hello", Duration::from_secs(5)).await);

        net.cut(addr(1), addr(2));
        assert!(!echo_within(&conn, b"cut", Duration::from_millis(500)).await);

        net.heal();
        // QUIC retransmits, so the same connection carries traffic again (within its idle
        // timeout of 3 s).
        assert!(echo_within(&conn, b"healed", Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn isolation_drops_traffic_to_every_peer() {
        let net = MemNet::new();
        let _server = echo_server(&net, addr(1));
        let client = net.client_endpoint(addr(3)).unwrap();
        net.isolate(addr(1));
        let connecting = client.connect(addr(1), SERVER_NAME).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(500), connecting)
                .await
                .is_err(),
            "a handshake with an isolated endpoint must not complete"
        );
        net.heal();
        let conn = client.connect(addr(1), SERVER_NAME).unwrap().await.unwrap();
        assert!(echo_within(&conn, b"back", Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_partition_cuts_across_the_sides_only() {
        let net = MemNet::new();
        let _far = echo_server(&net, addr(1));
        let _near = echo_server(&net, addr(2));
        let client = net.endpoint(addr(3)).unwrap();
        let connect = |to| {
            client
                .connect_with(
                    client_config(ALPN_RAFT, &Security::Insecure).unwrap(),
                    to,
                    SERVER_NAME,
                )
                .unwrap()
        };
        let far = connect(addr(1)).await.unwrap();
        let near = connect(addr(2)).await.unwrap();

        net.partition(&[addr(1)], &[addr(2), addr(3)]);
        assert!(!echo_within(&far, b"across", Duration::from_millis(500)).await);
        assert!(echo_within(&near, b"same side", Duration::from_secs(5)).await);

        net.heal();
        assert!(echo_within(&far, b"healed", Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn a_delay_holds_datagrams_back() {
        let net = MemNet::new();
        let _server = echo_server(&net, addr(1));
        let client = net.endpoint(addr(2)).unwrap();
        let conn = client
            .connect_with(
                client_config(ALPN_RAFT, &Security::Insecure).unwrap(),
                addr(1),
                SERVER_NAME,
            )
            .unwrap()
            .await
            .unwrap();
        net.delay(addr(1), addr(2), Duration::from_millis(150));
        let started = tokio::time::Instant::now();
        assert!(echo_within(&conn, b"slow", Duration::from_secs(5)).await);
        // At least one round trip: there and back, 150 ms each way.
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn an_address_is_bound_once_at_a_time() {
        let net = MemNet::new();
        let first = net.bind(addr(1)).unwrap();
        assert_eq!(
            net.bind(addr(1)).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(first);
        assert!(net.bind(addr(1)).is_ok());
    }
}
