//! The manager's answer to "is this peer a member of the group?" when its own view says no:
//! it asks the group's other members it knows, over the admin API, with its own manager
//! certificate (`Describe` is open to manager certificates), and takes the first yes.
//!
//! A member's view comes from the group's log, so a manager that missed membership changes
//! while it was down learns of a new leader from the members that did not. The verdicts are
//! cached by `firetower_raft::vouch::Vouching`; this module only asks.

use firetower_link::Security;
use firetower_proto::admin::DescribeRequest;
use firetower_raft::vouch::{Vouch, VouchFuture, VOUCH_TIMEOUT};
use firetower_raft::{GroupId, ManagerId, ManagerNode};
use futures::stream::{FuturesUnordered, StreamExt};

use crate::membership::connect;

/// Asks members over the admin API.
pub(crate) struct AdminVouch {
    security: Security,
}

impl AdminVouch {
    pub(crate) fn new(security: Security) -> Self {
        Self { security }
    }
}

impl Vouch for AdminVouch {
    fn vouch(
        &self,
        group: GroupId,
        peer: ManagerId,
        members: Vec<(ManagerId, ManagerNode)>,
    ) -> VouchFuture {
        let security = self.security.clone();
        Box::pin(async move {
            let mut asks: FuturesUnordered<_> = members
                .into_iter()
                .map(|(id, node)| {
                    let security = security.clone();
                    async move { counts_as_member(&security, id, &node.admin, group, peer).await }
                })
                .collect();
            while let Some(yes) = asks.next().await {
                if yes {
                    return true;
                }
            }
            false
        })
    }
}

/// Whether manager `member`, at admin address `admin`, has `peer` among the voters or learners
/// of `group`. Any failure to get an answer is a no.
async fn counts_as_member(
    security: &Security,
    member: ManagerId,
    admin: &str,
    group: GroupId,
    peer: ManagerId,
) -> bool {
    let described = async {
        let mut client = connect(admin, security, VOUCH_TIMEOUT).await?;
        client.describe(DescribeRequest {}).await
    };
    let reply = match tokio::time::timeout(VOUCH_TIMEOUT, described).await {
        Ok(Ok(reply)) => reply.into_inner(),
        Ok(Err(status)) => {
            tracing::debug!(member, %admin, %status, "a member could not be asked to vouch");
            return false;
        }
        Err(_) => {
            tracing::debug!(member, %admin, "a member did not answer in time to vouch");
            return false;
        }
    };
    if reply.id != member {
        tracing::warn!(member, found = reply.id, %admin, "another manager answers at a member's address");
        return false;
    }
    reply
        .group_status
        .iter()
        .filter(|status| status.id == group.get())
        .any(|status| status.voters.contains(&peer) || status.learners.contains(&peer))
}
