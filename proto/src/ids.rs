//! Identifiers as types of their own, so a gateway id is never passed where a manager id or an
//! epoch is expected. Each is a `u64` (or `u32`) on the wire and in JSON (`serde(transparent)`).

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl $name {
            /// The number inside.
            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(value: $inner) -> Self {
                Self(value)
            }
        }

        impl From<$name> for $inner {
            fn from(value: $name) -> Self {
                value.0
            }
        }
    };
}

id_type!(
    /// A gateway process across restarts (`firetower gateway --id`).
    GatewayId(u64)
);
id_type!(
    /// A topic manager (`firetower manager --id`); openraft's node id.
    ManagerId(u64)
);
id_type!(
    /// A Raft group (shard of the topic space), `0..G`.
    GroupId(u32)
);
id_type!(
    /// A gateway session's epoch: a restarted gateway opens its session with a higher one.
    Epoch(u64)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_numbers_in_json() {
        assert_eq!(serde_json::to_string(&GatewayId(7)).expect("json"), "7");
        let group: GroupId = serde_json::from_str("3").expect("json");
        assert_eq!(group, GroupId(3));
        assert_eq!(ManagerId(2).to_string(), "2");
        assert!(Epoch(1) < Epoch(2));
    }
}
