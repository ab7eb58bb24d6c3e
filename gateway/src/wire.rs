//! How frames reach a client: the encoding (flavour) and the framing (WebSocket or raw TCP).
//! Pure functions over the codecs of `firetower-client`.

use bytes::Bytes;

use firetower_client::tcp;
use firetower_client::ws::{self, Opcode};
use firetower_client::{ClientFrame, Flavour, ParseError, ServerFrame};

/// How frames reach a client: the encoding (flavour) and the framing (WebSocket or TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// WebSocket text messages holding JSON (`firetower.json`).
    WsJson,
    /// WebSocket binary messages holding protobuf (`firetower.proto`).
    WsProto,
    /// Raw TCP: 4-byte length + protobuf.
    Tcp,
}

impl Wire {
    /// Every wire, for per-wire caches indexed by [`Wire::index`].
    pub const ALL: [Wire; 3] = [Wire::WsJson, Wire::WsProto, Wire::Tcp];

    /// A dense index (0..3).
    pub fn index(self) -> usize {
        match self {
            Wire::WsJson => 0,
            Wire::WsProto => 1,
            Wire::Tcp => 2,
        }
    }

    /// The WebSocket wire of a flavour.
    pub fn websocket(flavour: Flavour) -> Wire {
        match flavour {
            Flavour::Json => Wire::WsJson,
            Flavour::Proto => Wire::WsProto,
        }
    }

    /// The encoding spoken on this wire.
    pub fn flavour(self) -> Flavour {
        match self {
            Wire::WsJson => Flavour::Json,
            Wire::WsProto | Wire::Tcp => Flavour::Proto,
        }
    }

    /// Encode a server frame into the exact bytes written to the socket.
    pub fn encode(self, frame: &ServerFrame) -> Bytes {
        match self {
            Wire::WsJson => ws::encode_message(Opcode::Text, &frame.encode_json()),
            Wire::WsProto => ws::encode_message(Opcode::Binary, &frame.encode_proto()),
            Wire::Tcp => tcp::encode_frame(&frame.encode_proto()),
        }
    }

    /// Parse one client frame's payload in this wire's encoding.
    pub(crate) fn parse(self, payload: &[u8]) -> Result<ClientFrame, ParseError> {
        match self.flavour() {
            Flavour::Json => ClientFrame::parse_json(payload),
            Flavour::Proto => ClientFrame::parse_proto(payload),
        }
    }
}
