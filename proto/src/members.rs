//! The `cluster members --json` view: one serde type that the CLI prints and every test
//! harness (root tests, chaos, jepsen) reads, instead of each indexing untyped JSON.
//!
//! ```json
//! {"cluster_id":"…","managers":[{"id":1,"quic":"127.0.0.1:6666","admin":"127.0.0.1:6667","reachable":true}],
//!  "groups":[{"id":0,"leader":1,"term":3,"voters":[1,2,3],"learners":[],"committed":120,"applied":120,"replicas":[…]}]}
//! ```
//! Fields may be added; these stay (DESIGN.md, "CLI").

use serde::{Deserialize, Serialize};

use crate::admin::MembersReply;
use crate::ids::{GroupId, ManagerId};

/// The whole view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersView {
    /// The cluster's id, fixed at `cluster init`.
    pub cluster_id: String,
    /// Every manager of the cluster.
    pub managers: Vec<ManagerView>,
    /// Every group, in id order.
    pub groups: Vec<GroupView>,
}

/// One manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerView {
    /// Its id.
    pub id: ManagerId,
    /// QUIC address (Raft RPCs and gateways).
    pub quic: String,
    /// gRPC admin address.
    pub admin: String,
    /// Whether the manager that answered could reach it.
    pub reachable: bool,
}

/// One group, as its leader (or the answering manager) sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// The group.
    pub id: GroupId,
    /// The current leader, `null` while none is known.
    pub leader: Option<ManagerId>,
    /// The current term.
    pub term: u64,
    /// Voting members.
    pub voters: Vec<ManagerId>,
    /// Non-voting members (being added).
    pub learners: Vec<ManagerId>,
    /// Commit index.
    pub committed: u64,
    /// Last applied index.
    pub applied: u64,
    /// Every reachable replica's own view.
    #[serde(default)]
    pub replicas: Vec<ReplicaView>,
}

/// One replica's own view of its group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// The replica's manager.
    pub id: ManagerId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: String,
    /// Its term.
    pub term: u64,
    /// Its commit index.
    pub committed: u64,
    /// Its last applied index.
    pub applied: u64,
}

impl MembersView {
    /// The group with this id.
    pub fn group(&self, id: GroupId) -> Option<&GroupView> {
        self.groups.iter().find(|g| g.id == id)
    }

    /// Ids of every manager, in the order listed.
    pub fn manager_ids(&self) -> Vec<ManagerId> {
        self.managers.iter().map(|m| m.id).collect()
    }
}

impl From<&MembersReply> for MembersView {
    fn from(reply: &MembersReply) -> Self {
        let ids = |ids: &[u64]| ids.iter().copied().map(ManagerId).collect::<Vec<_>>();
        MembersView {
            cluster_id: reply.cluster_id.clone(),
            managers: reply
                .managers
                .iter()
                .map(|m| ManagerView {
                    id: ManagerId(m.id),
                    quic: m.quic.clone(),
                    admin: m.admin.clone(),
                    reachable: m.reachable,
                })
                .collect(),
            groups: reply
                .groups
                .iter()
                .map(|g| GroupView {
                    id: GroupId(g.id),
                    leader: (g.leader != 0).then_some(ManagerId(g.leader)),
                    term: g.term,
                    voters: ids(&g.voters),
                    learners: ids(&g.learners),
                    committed: g.committed,
                    applied: g.applied,
                    replicas: g
                        .replicas
                        .iter()
                        .map(|r| ReplicaView {
                            id: ManagerId(r.id),
                            state: r.state.clone(),
                            term: r.term,
                            committed: r.committed,
                            applied: r.applied,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{GroupStatus, ManagerInfo};

    #[test]
    fn the_view_has_the_documented_shape() {
        let reply = MembersReply {
            cluster_id: "c1".into(),
            managers: vec![ManagerInfo {
                id: 1,
                quic: "127.0.0.1:6666".into(),
                admin: "127.0.0.1:6667".into(),
                reachable: true,
            }],
            groups: vec![
                GroupStatus {
                    id: 0,
                    leader: 1,
                    term: 3,
                    voters: vec![1, 2, 3],
                    learners: vec![],
                    committed: 120,
                    applied: 120,
                    replicas: vec![],
                },
                GroupStatus {
                    id: 1,
                    leader: 0,
                    ..Default::default()
                },
            ],
        };
        let view = MembersView::from(&reply);
        let json: serde_json::Value = serde_json::to_value(&view).expect("json");
        assert_eq!(json["managers"][0]["id"], 1);
        assert_eq!(json["managers"][0]["reachable"], true);
        assert_eq!(json["groups"][0]["voters"], serde_json::json!([1, 2, 3]));
        assert_eq!(json["groups"][0]["leader"], 1);
        assert!(json["groups"][1]["leader"].is_null());
        let back: MembersView = serde_json::from_value(json).expect("parse back");
        assert_eq!(back, view);
        assert_eq!(view.group(GroupId(0)).map(|g| g.term), Some(3));
    }
}
