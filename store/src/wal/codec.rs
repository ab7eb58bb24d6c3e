//! The on-disk record format of the write-ahead log.
//!
//! ```text
//!   0        4        8                      8+len
//!   ┌────────┬────────┬──────────────────────┐
//!   │ len    │ crc32  │ postcard(Record)     │   len, crc: u32 little endian
//!   └────────┴────────┴──────────────────────┘
//!   crc32 covers the len field and the payload, so a stray length cannot pass as valid.
//! ```
//!
//! The codec is pure: it turns bytes into records and back, and never panics on any input
//! (a property test below feeds it random bytes).

use std::borrow::Cow;

use openraft::{LogId, Vote};
use serde::{Deserialize, Serialize};

use crate::types::ManagerId;

/// Bytes before the payload: length and checksum.
pub(crate) const HEADER_LEN: usize = 8;

/// Largest payload accepted. Far above any batch openraft hands us (it caps entries per
/// append), and small enough that a corrupt length field is recognised as such.
pub(crate) const MAX_PAYLOAD_LEN: usize = 128 * 1024 * 1024;

/// One change to the durable state of one group (or, for checkpoints, of all groups).
///
/// Variant order is part of the file format (postcard encodes the variant index): append new
/// variants at the end only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "E: Serialize",
    deserialize = "E: Deserialize<'de> + Clone"
))]
pub(crate) enum Record<'a, E: Clone> {
    /// Entries appended to a group's log; entries at or after the first index are replaced.
    Append { group: u32, entries: Cow<'a, [E]> },
    /// Entries at and after `since_index` removed (a conflicting suffix).
    Truncate { group: u32, since_index: u64 },
    /// Entries up to and including `upto` removed (covered by a snapshot).
    Purge { group: u32, upto: LogId<ManagerId> },
    /// The group's vote.
    Vote { group: u32, vote: Vote<ManagerId> },
    /// The group's last known committed log id.
    Committed {
        group: u32,
        log_id: Option<LogId<ManagerId>>,
    },
    /// First record of every segment: the pointers of every group at that point, so that
    /// older segments are needed only for the entries they hold.
    Checkpoint { groups: Vec<GroupPointers> },
}

/// The small, overwritten-in-place state of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupPointers {
    pub group: u32,
    pub vote: Option<Vote<ManagerId>>,
    pub committed: Option<LogId<ManagerId>>,
    pub purged: Option<LogId<ManagerId>>,
}

/// Why a frame could not be read at some offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Fewer bytes left than the header or the announced payload: a write cut short.
    Truncated { needed: usize, available: usize },
    /// The length field is zero or larger than [`MAX_PAYLOAD_LEN`].
    BadLength(u32),
    /// The checksum does not match: the bytes were damaged or never completely written.
    Checksum { stored: u32, computed: u32 },
    /// The checksum matches but the payload is not a record this version understands.
    Decode(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated { needed, available } => {
                write!(
                    f,
                    "record cut short: needs {needed} bytes, {available} left"
                )
            }
            FrameError::BadLength(len) => write!(f, "impossible record length {len}"),
            FrameError::Checksum { stored, computed } => {
                write!(
                    f,
                    "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            FrameError::Decode(e) => {
                write!(f, "checksum is valid but the payload does not decode: {e}")
            }
        }
    }
}

/// Encodes `record` as one frame.
pub(crate) fn encode<E: Clone + Serialize>(
    record: &Record<'_, E>,
) -> Result<Vec<u8>, postcard::Error> {
    let mut out = postcard::to_extend(record, vec![0u8; HEADER_LEN])?;
    let payload_len = out.len() - HEADER_LEN;
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(postcard::Error::SerializeBufferFull);
    }
    // Fits: checked against MAX_PAYLOAD_LEN (< u32::MAX) just above.
    let len = (payload_len as u32).to_le_bytes();
    let crc = checksum(&len, &out[HEADER_LEN..]);
    out[..4].copy_from_slice(&len);
    out[4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks the frame at the start of `buf` and returns its payload and total frame length.
/// Does not decode: recovery uses this to look for valid records after a damaged one.
pub(crate) fn check_frame(buf: &[u8]) -> Result<(&[u8], usize), FrameError> {
    let Some((header, rest)) = buf.split_first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN,
            available: buf.len(),
        });
    };
    let len_bytes = [header[0], header[1], header[2], header[3]];
    let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let len = u32::from_le_bytes(len_bytes);
    if len == 0 || len as usize > MAX_PAYLOAD_LEN {
        return Err(FrameError::BadLength(len));
    }
    let len = len as usize;
    let Some(payload) = rest.get(..len) else {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN + len,
            available: buf.len(),
        });
    };
    let computed = checksum(&len_bytes, payload);
    if computed != stored {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok((payload, HEADER_LEN + len))
}

/// Reads the frame at the start of `buf`: the record and the frame's total length.
pub(crate) fn decode<E>(buf: &[u8]) -> Result<(Record<'static, E>, usize), FrameError>
where
    E: Clone + for<'de> Deserialize<'de>,
{
    let (payload, frame_len) = check_frame(buf)?;
    let record = postcard::from_bytes::<Record<'static, E>>(payload)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    Ok((record, frame_len))
}

fn checksum(len: &[u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len);
    hasher.update(payload);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, Membership};
    use proptest::prelude::*;

    use super::*;
    use crate::{Command, ManagerNode, Response};

    openraft::declare_raft_types!(
        CodecConfig:
            D = Command,
            R = Response,
            NodeId = ManagerId,
            Node = ManagerNode,
            Entry = openraft::Entry<CodecConfig>,
            SnapshotData = std::io::Cursor<Vec<u8>>,
            AsyncRuntime = openraft::TokioRuntime,
    );

    type Entry = openraft::Entry<CodecConfig>;

    fn log_id(term: u64, index: u64) -> LogId<ManagerId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (".{0,12}", any::<u64>())
                .prop_map(|(topic, gateway)| Command::Subscribe { topic, gateway }),
            (".{0,12}", any::<u64>())
                .prop_map(|(topic, gateway)| Command::Unsubscribe { topic, gateway }),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(gateway, epoch, lease_ms)| {
                Command::OpenSession {
                    gateway,
                    epoch,
                    lease_ms,
                }
            }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(gateway, epoch)| Command::ExpireSession { gateway, epoch }),
            (any::<u64>(), any::<bool>())
                .prop_map(|(gateway, blocked)| Command::Blacklist { gateway, blocked }),
            (".{0,8}", proptest::collection::vec(any::<u8>(), 0..16))
                .prop_map(|(key, value)| Command::SetMeta { key, value }),
        ]
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        let payload = prop_oneof![
            Just(EntryPayload::<CodecConfig>::Blank),
            arb_command().prop_map(EntryPayload::Normal),
            proptest::collection::btree_set(0u64..10, 1..4)
                .prop_map(|voters| { EntryPayload::Membership(Membership::new(vec![voters], ())) }),
        ];
        (0u64..5, 0u64..1000, payload).prop_map(|(term, index, payload)| Entry {
            log_id: log_id(term, index),
            payload,
        })
    }

    fn arb_record() -> impl Strategy<Value = Record<'static, Entry>> {
        let pointers = (
            any::<u32>(),
            proptest::option::of((0u64..9, 0u64..9)),
            proptest::option::of(0u64..99),
        )
            .prop_map(|(group, vote, idx)| GroupPointers {
                group,
                vote: vote.map(|(t, n)| Vote::new(t, n)),
                committed: idx.map(|i| log_id(1, i)),
                purged: idx.map(|i| log_id(1, i / 2)),
            });
        prop_oneof![
            (any::<u32>(), proptest::collection::vec(arb_entry(), 0..6)).prop_map(
                |(group, entries)| Record::Append {
                    group,
                    entries: Cow::Owned(entries)
                }
            ),
            (any::<u32>(), any::<u64>())
                .prop_map(|(group, since_index)| Record::Truncate { group, since_index }),
            (any::<u32>(), 0u64..9, any::<u64>()).prop_map(|(group, t, i)| Record::Purge {
                group,
                upto: log_id(t, i)
            }),
            (any::<u32>(), 0u64..9, 0u64..9, any::<bool>()).prop_map(|(group, t, n, c)| {
                let mut vote = Vote::new(t, n);
                if c {
                    vote.commit();
                }
                Record::Vote { group, vote }
            }),
            (any::<u32>(), proptest::option::of(any::<u64>())).prop_map(|(group, i)| {
                Record::Committed {
                    group,
                    log_id: i.map(|i| log_id(2, i)),
                }
            }),
            proptest::collection::vec(pointers, 0..4)
                .prop_map(|groups| Record::Checkpoint { groups }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(records in proptest::collection::vec(arb_record(), 1..8)) {
            let mut buf = Vec::new();
            for r in &records {
                buf.extend_from_slice(&encode(r).unwrap());
            }
            let mut offset = 0;
            for r in &records {
                let (decoded, len) = decode::<Entry>(&buf[offset..]).unwrap();
                prop_assert_eq!(&decoded, r);
                offset += len;
            }
            prop_assert_eq!(offset, buf.len());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Entry>(&bytes);
        }

        #[test]
        fn decode_of_valid_frame_with_random_payload_never_panics(payload in proptest::collection::vec(any::<u8>(), 1..256)) {
            let len = (payload.len() as u32).to_le_bytes();
            let mut frame = len.to_vec();
            frame.extend_from_slice(&checksum(&len, &payload).to_le_bytes());
            frame.extend_from_slice(&payload);
            let _ = decode::<Entry>(&frame);
        }

        #[test]
        fn any_damage_is_detected(record in arb_record(), flip in any::<proptest::sample::Index>(), bit in 0u8..8) {
            let mut buf = encode(&record).unwrap();
            let at = flip.index(buf.len());
            buf[at] ^= 1 << bit;
            if let Ok((decoded, _)) = decode::<Entry>(&buf) {
                prop_assert!(false, "damaged frame decoded as {decoded:?}");
            }
        }

        #[test]
        fn every_cut_is_truncated(record in arb_record(), cut in any::<proptest::sample::Index>()) {
            let buf = encode(&record).unwrap();
            let at = cut.index(buf.len());
            let is_truncated = matches!(decode::<Entry>(&buf[..at]), Err(FrameError::Truncated { .. }));
            prop_assert!(is_truncated);
        }
    }

    #[test]
    fn zero_filled_tail_is_not_a_record() {
        assert!(matches!(
            decode::<Entry>(&[0u8; 64]),
            Err(FrameError::BadLength(0))
        ));
    }
}
