//! Firetower's wire contracts: the admin gRPC API (`admin`) and the gateway <-> manager link
//! frames (`link`), generated from `proto/*.proto` at build time.
//!
//! [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.

#![allow(missing_debug_implementations)]

/// Admin gRPC API (`firetower.admin.v1`).
pub mod admin {
    tonic::include_proto!("firetower.admin.v1");
}

/// Gateway <-> manager frames (`firetower.link.v1`).
pub mod link {
    tonic::include_proto!("firetower.link.v1");
}

/// Client <-> gateway frames, protobuf flavour (`firetower.client.v1`).
pub mod client {
    tonic::include_proto!("firetower.client.v1");
}

/// Encoded `FileDescriptorSet` of every Firetower proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/firetower_descriptor.bin"));

mod topic;

pub use topic::{validate_topic, TopicError, MAX_TOPIC_BYTES};

mod placement;

pub use placement::{group_of, jump_consistent_hash};

mod ids;

pub use ids::{Epoch, GatewayId, GroupId, ManagerId};

mod members;

pub use members::{GroupView, ManagerView, MembersView, ReplicaView};
