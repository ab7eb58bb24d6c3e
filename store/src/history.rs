//! History and presence in a group's table: the rules (group 0) and, per topic, the kept
//! messages and who is present. Pure table logic on the apply overlay, applied in log order by
//! every replica, so every replica keeps the same messages under the same offsets.
//!
//! ```text
//!   g{N}.meta (text keys, so snapshots carry them as they carry every meta key)
//!     ops/history/{pattern}              -> HistoryRule      (group 0; ops/rules_version)
//!     ops/presence/{pattern}             -> ()               (group 0)
//!     hist/t/{topic}                     -> TopicHistory     epoch, first and last offset
//!     hist/e/{topic}\0{offset:016x}      -> HistoryRecord    one kept message
//!     hist/q/{n:016x}                    -> "{topic}\0{offset:016x}"  appends in log order
//!     hist/state                         -> HistoryState     queue head/tail, bytes kept
//!     pres/{topic}\0{user}\0{gw:016x}    -> u32 BE           connections of a user on a gateway
//!     presg/{gw:016x}\0{topic}\0{user}   -> ()               the same, by gateway
//! ```
//!
//! Bounds. Per topic: the rule's `size` and `ttl_ms`, applied at every append of the topic.
//! Per group: [`HISTORY_BYTES_PER_GROUP`] of payloads, topics and queue references; the
//! oldest appends of the group go first when it is over, and expired ones go from the head of
//! the queue at every append of any topic, so a topic nobody publishes to any more is emptied
//! by the others' traffic. Time is the appending entry's `at_ms` (the proposing leader's
//! clock), never the replica's, so every replica trims the same messages.
//!
//! Epoch. A topic's history starts with an epoch named after the entry that created it
//! (`{term}-{index}`), and offsets count from 1 in it. When every message of a topic is
//! dropped by the group-wide trimming (TTL or the byte bound), the topic's record goes with
//! them: the next append starts a new epoch at offset 1. So an epoch changes only when history
//! was lost, and a `(epoch, offset)` a client holds never names two different messages.
//!
//! Topics never contain NUL (topic rules), so `\0` separates key parts unambiguously.

use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::error::StoreError;
use crate::types::GatewayId;

/// The meta table of a group as the apply sees it (the state machine's overlay of pending
/// writes implements it), so this module needs nothing else of the state machine.
pub(crate) trait MetaTable {
    fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn meta_put(&mut self, key: Vec<u8>, value: Vec<u8>);
    fn meta_remove(&mut self, key: Vec<u8>);
    fn meta_keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError>;
    /// The table's name, for errors.
    fn meta_name(&self) -> String;
}

/// Bytes of kept messages (payload, topic and the queue's reference) one group holds at most.
pub const HISTORY_BYTES_PER_GROUP: u64 = 32 * 1024 * 1024;

pub(crate) const HISTORY_RULE_PREFIX: &str = "ops/history/";
pub(crate) const PRESENCE_RULE_PREFIX: &str = "ops/presence/";
pub(crate) const RULES_VERSION: &str = "ops/rules_version";
const TOPIC_PREFIX: &str = "hist/t/";
const ENTRY_PREFIX: &str = "hist/e/";
const QUEUE_PREFIX: &str = "hist/q/";
const STATE_KEY: &str = "hist/state";
const PRESENCE_PREFIX: &str = "pres/";
const PRESENCE_BY_GATEWAY: &str = "presg/";

/// A history rule as group 0 stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRule {
    /// Messages kept per topic.
    pub size: u32,
    /// How long a message is kept, milliseconds.
    pub ttl_ms: u64,
}

/// What a group keeps of one topic's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TopicHistory {
    epoch: String,
    /// Offset of the oldest kept message (`last + 1` when none is kept).
    first: u64,
    /// Offset of the newest message ever appended in this epoch.
    last: u64,
}

/// One kept message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HistoryRecord {
    at_ms: u64,
    ttl_ms: u64,
    term: u64,
    json: bool,
    data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct HistoryState {
    /// Next queue position to pop.
    head: u64,
    /// Next queue position to push.
    tail: u64,
    /// Bytes counted against [`HISTORY_BYTES_PER_GROUP`].
    bytes: u64,
}

/// A message appended to a topic's history, as the apply observer hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The topic.
    pub topic: String,
    /// Its payload.
    pub data: bytes::Bytes,
    /// True when `data` is JSON text.
    pub json: bool,
    /// The term of the entry that carried it.
    pub term: u64,
    /// Its offset.
    pub offset: u64,
    /// The topic's epoch.
    pub epoch: String,
    /// The gateways subscribed to the topic when it was applied.
    pub gateways: Vec<GatewayId>,
}

/// A user's arrival or departure on a topic, counting every gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// The topic.
    pub topic: String,
    /// The user.
    pub user: String,
    /// True: its first connection subscribed; false: its last one left.
    pub joined: bool,
    /// The gateways subscribed to the topic when it was applied.
    pub gateways: Vec<GatewayId>,
}

/// What a batch of applied entries did that the leader must tell gateways about, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyEvent {
    /// A message was appended to a topic's history.
    Appended(Appended),
    /// A user joined or left a topic.
    Presence(PresenceChange),
}

/// Told of every batch a group's state machine applied (on every replica: the observer decides
/// whether it leads). Runs on the apply path: it must not block.
pub trait ApplyObserver: Send + Sync + 'static {
    /// `events` happened in `group`, in log order.
    fn applied(&self, group: u32, events: Vec<ApplyEvent>);
}

/// Kept messages of a topic from an offset on, as a leader reads them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryRead {
    /// The topic's epoch; empty when nothing was ever kept (or all was lost).
    pub epoch: String,
    /// Offset of the oldest message still kept and not expired (`last + 1` when none).
    pub first: u64,
    /// Offset of the newest message appended in this epoch (0 when none).
    pub last: u64,
    /// `(offset, term, json, data)` of the messages read, oldest first.
    pub messages: Vec<(u64, u64, bool, Vec<u8>)>,
    /// True when the read stopped at its limits before `last`.
    pub truncated: bool,
}

fn topic_key(topic: &str) -> Vec<u8> {
    format!("{TOPIC_PREFIX}{topic}").into_bytes()
}

fn entry_ref(topic: &str, offset: u64) -> String {
    format!("{topic}\0{offset:016x}")
}

fn entry_key(topic: &str, offset: u64) -> Vec<u8> {
    format!("{ENTRY_PREFIX}{}", entry_ref(topic, offset)).into_bytes()
}

fn queue_key(n: u64) -> Vec<u8> {
    format!("{QUEUE_PREFIX}{n:016x}").into_bytes()
}

pub(crate) fn rule_key(prefix: &str, pattern: &str) -> Vec<u8> {
    format!("{prefix}{pattern}").into_bytes()
}

fn presence_key(topic: &str, user: &str, gateway: GatewayId) -> Vec<u8> {
    format!("{PRESENCE_PREFIX}{topic}\0{user}\0{gateway:016x}").into_bytes()
}

fn presence_by_gateway(gateway: GatewayId, topic: &str, user: &str) -> Vec<u8> {
    format!("{PRESENCE_BY_GATEWAY}{gateway:016x}\0{topic}\0{user}").into_bytes()
}

fn meta_name(tx: &impl MetaTable) -> String {
    tx.meta_name()
}

fn get<T: serde::de::DeserializeOwned>(
    tx: &impl MetaTable,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match tx.meta_get(key)? {
        Some(v) => Ok(Some(decode(&v, &meta_name(tx))?)),
        None => Ok(None),
    }
}

fn record_cost(topic: &str, data_len: usize) -> u64 {
    // Payload, the entry's key, and the queue's reference to it.
    (data_len + 2 * (topic.len() + 24)) as u64
}

/// [`crate::Command::HistoryAppend`]: the message's offset and the topic's epoch.
#[allow(clippy::too_many_arguments)] // the command's fields, unpacked
pub(crate) fn append(
    tx: &mut impl MetaTable,
    log_id: (u64, u64),
    topic: &str,
    data: &[u8],
    json: bool,
    at_ms: u64,
    size: u32,
    ttl_ms: u64,
) -> Result<(u64, String), StoreError> {
    let (term, index) = log_id;
    let tkey = topic_key(topic);
    let mut th: TopicHistory = get(tx, &tkey)?.unwrap_or_else(|| TopicHistory {
        epoch: format!("{term}-{index}"),
        first: 1,
        last: 0,
    });
    let mut state: HistoryState = get(tx, STATE_KEY.as_bytes())?.unwrap_or_default();
    let offset = th.last + 1;
    let record = HistoryRecord {
        at_ms,
        ttl_ms,
        term,
        json,
        data: data.to_vec(),
    };
    tx.meta_put(entry_key(topic, offset), encode(&record)?);
    tx.meta_put(queue_key(state.tail), entry_ref(topic, offset).into_bytes());
    state.tail += 1;
    state.bytes = state.bytes.saturating_add(record_cost(topic, data.len()));
    th.last = offset;
    // The topic's own window: its size, and its TTL as of this message.
    let size = u64::from(size.max(1));
    while th.first <= th.last {
        let too_many = th.last - th.first + 1 > size;
        let key = entry_key(topic, th.first);
        let expired = match get::<HistoryRecord>(tx, &key)? {
            Some(r) => r.at_ms.saturating_add(r.ttl_ms) <= at_ms,
            None => true,
        };
        if !too_many && !expired {
            break;
        }
        remove_entry(tx, &key, &mut state)?;
        th.first += 1;
    }
    tx.meta_put(tkey, encode(&th)?);
    let epoch = th.epoch.clone();
    trim_group(tx, &mut state, at_ms)?;
    tx.meta_put(STATE_KEY.as_bytes().to_vec(), encode(&state)?);
    Ok((offset, epoch))
}

/// Removes one kept message (its queue reference stays until popped, and its bytes with it).
fn remove_entry(
    tx: &mut impl MetaTable,
    key: &[u8],
    state: &mut HistoryState,
) -> Result<(), StoreError> {
    if let Some(r) = get::<HistoryRecord>(tx, key)? {
        state.bytes = state.bytes.saturating_sub(r.data.len() as u64);
        tx.meta_remove(key.to_vec());
    }
    Ok(())
}

/// Pops the group's oldest appends while the group is over its bytes, or the oldest one
/// expired (as of `now_ms`), or was already removed by its topic's window.
fn trim_group(
    tx: &mut impl MetaTable,
    state: &mut HistoryState,
    now_ms: u64,
) -> Result<(), StoreError> {
    while state.head < state.tail {
        let qkey = queue_key(state.head);
        let Some(reference) = tx.meta_get(&qkey)? else {
            state.head += 1;
            continue;
        };
        let text = String::from_utf8_lossy(&reference).into_owned();
        let Some((topic, hex)) = text.split_once('\0') else {
            tx.meta_remove(qkey);
            state.head += 1;
            continue;
        };
        let offset = u64::from_str_radix(hex, 16).unwrap_or(0);
        let ekey = entry_key(topic, offset);
        let record: Option<HistoryRecord> = get(tx, &ekey)?;
        let over = state.bytes > HISTORY_BYTES_PER_GROUP;
        let expired = record
            .as_ref()
            .is_some_and(|r| r.at_ms.saturating_add(r.ttl_ms) <= now_ms);
        if record.is_some() && !over && !expired {
            break;
        }
        tx.meta_remove(qkey);
        state.head += 1;
        // The reference's own share of the bytes (the payload's share goes with the entry).
        let cost = record_cost(topic, 0);
        if record.is_some() {
            remove_entry(tx, &ekey, state)?;
            // The queue is in log order and a topic's entries are appended in order, so the
            // group's oldest entry of a topic is that topic's first.
            let tkey = topic_key(topic);
            if let Some(mut th) = get::<TopicHistory>(tx, &tkey)? {
                th.first = th.first.max(offset + 1);
                if th.first > th.last {
                    // Every message of the topic is gone: so is its epoch (module doc).
                    tx.meta_remove(tkey);
                } else {
                    tx.meta_put(tkey, encode(&th)?);
                }
            }
        }
        state.bytes = state.bytes.saturating_sub(cost);
    }
    Ok(())
}

/// Reads the kept messages of `topic` with offsets above `after`, at most `limit` of them and
/// about `max_bytes` of payload, skipping those expired at `now_ms`.
#[allow(clippy::too_many_arguments)] // the table, how to address it, and the read's five bounds
pub(crate) fn read(
    map: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    tag: fn(&[u8]) -> Vec<u8>,
    name: &str,
    topic: &str,
    after: u64,
    limit: usize,
    max_bytes: usize,
    now_ms: u64,
) -> Result<HistoryRead, StoreError> {
    let Some(th) = map.get(&tag(&topic_key(topic))) else {
        return Ok(HistoryRead::default());
    };
    let th: TopicHistory = decode(th, name)?;
    let mut out = HistoryRead {
        epoch: th.epoch.clone(),
        first: th.last + 1,
        last: th.last,
        messages: Vec::new(),
        truncated: false,
    };
    let from = tag(&entry_key(topic, th.first.max(after.saturating_add(1))));
    let prefix = tag(format!("{ENTRY_PREFIX}{topic}\0").as_bytes());
    let mut bytes = 0usize;
    let mut first_seen = false;
    for (key, value) in map.range(from..) {
        if !key.starts_with(&prefix) {
            break;
        }
        let hex = std::str::from_utf8(&key[prefix.len()..]).unwrap_or("");
        let Ok(offset) = u64::from_str_radix(hex, 16) else {
            continue;
        };
        let r: HistoryRecord = decode(value, name)?;
        // Expiry cuts a prefix only: the window stays contiguous (a message kept longer than
        // an older one, after a rule's TTL shrank, keeps the older one readable).
        if !first_seen && r.at_ms.saturating_add(r.ttl_ms) <= now_ms {
            continue;
        }
        first_seen = true;
        if out.messages.len() >= limit || (bytes > 0 && bytes + r.data.len() > max_bytes) {
            out.truncated = true;
            break;
        }
        bytes += r.data.len();
        out.messages.push((offset, r.term, r.json, r.data));
    }
    // The oldest live message: from the start of the window (not only above `after`).
    let start = tag(&entry_key(topic, th.first));
    for (key, value) in map.range(start..) {
        if !key.starts_with(&prefix) {
            break;
        }
        let r: HistoryRecord = decode(value, name)?;
        if r.at_ms.saturating_add(r.ttl_ms) <= now_ms {
            continue;
        }
        let hex = std::str::from_utf8(&key[prefix.len()..]).unwrap_or("");
        if let Ok(offset) = u64::from_str_radix(hex, 16) {
            out.first = offset;
        }
        break;
    }
    Ok(out)
}

/// [`crate::Command::SetPresenceCount`]: `Some(true)` when the user joined the topic,
/// `Some(false)` when it left it, counting every gateway.
pub(crate) fn set_presence(
    tx: &mut impl MetaTable,
    topic: &str,
    user: &str,
    gateway: GatewayId,
    connections: u32,
) -> Result<Option<bool>, StoreError> {
    let before = user_present(tx, topic, user)?;
    let key = presence_key(topic, user, gateway);
    let by_gateway = presence_by_gateway(gateway, topic, user);
    if connections == 0 {
        tx.meta_remove(key);
        tx.meta_remove(by_gateway);
    } else {
        tx.meta_put(key, connections.to_be_bytes().to_vec());
        tx.meta_put(by_gateway, Vec::new());
    }
    let after = user_present(tx, topic, user)?;
    Ok((before != after).then_some(after))
}

fn user_present(tx: &impl MetaTable, topic: &str, user: &str) -> Result<bool, StoreError> {
    let prefix = format!("{PRESENCE_PREFIX}{topic}\0{user}\0");
    Ok(!tx.meta_keys_with_prefix(prefix.as_bytes())?.is_empty())
}

/// Removes every presence entry of `gateway` (its session ended): the `(topic, user)` pairs
/// whose user has no connection left on any gateway, which left.
pub(crate) fn drop_gateway_presence(
    tx: &mut impl MetaTable,
    gateway: GatewayId,
) -> Result<Vec<(String, String)>, StoreError> {
    let prefix = format!("{PRESENCE_BY_GATEWAY}{gateway:016x}\0");
    let mut left = Vec::new();
    for key in tx.meta_keys_with_prefix(prefix.as_bytes())? {
        let rest = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        let Some((topic, user)) = rest.split_once('\0') else {
            tx.meta_remove(key);
            continue;
        };
        if set_presence(tx, topic, user, gateway, 0)? == Some(false) {
            left.push((topic.to_string(), user.to_string()));
        }
    }
    Ok(left)
}

/// The users present on `topic` with their connection counts (summed over gateways), sorted.
pub(crate) fn presence_of(
    map: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    tag: fn(&[u8]) -> Vec<u8>,
    topic: &str,
) -> Vec<(String, u32)> {
    let prefix = tag(format!("{PRESENCE_PREFIX}{topic}\0").as_bytes());
    let mut users: Vec<(String, u32)> = Vec::new();
    for (key, value) in map.range(prefix.clone()..) {
        if !key.starts_with(&prefix) {
            break;
        }
        let rest = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        let Some((user, _gateway)) = rest.rsplit_once('\0') else {
            continue;
        };
        let n = value
            .as_slice()
            .try_into()
            .map(u32::from_be_bytes)
            .unwrap_or(0);
        match users.last_mut() {
            Some((u, c)) if u == user => *c = c.saturating_add(n),
            _ => users.push((user.to_string(), n)),
        }
    }
    users
}

/// The rules of group 0: history patterns with their windows, and presence patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Grows with every rule change.
    pub version: u64,
    /// `(pattern, rule)`, sorted by pattern.
    pub history: Vec<(String, HistoryRule)>,
    /// Patterns with presence, sorted.
    pub presence: Vec<String>,
}

pub(crate) fn read_rules(
    map: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    tag: fn(&[u8]) -> Vec<u8>,
    name: &str,
) -> Result<Rules, StoreError> {
    let mut rules = Rules::default();
    if let Some(v) = map.get(&tag(RULES_VERSION.as_bytes())) {
        rules.version = v.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0);
    }
    let prefix = tag(HISTORY_RULE_PREFIX.as_bytes());
    for (key, value) in map.range(prefix.clone()..) {
        if !key.starts_with(&prefix) {
            break;
        }
        let pattern = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        rules.history.push((pattern, decode(value, name)?));
    }
    let prefix = tag(PRESENCE_RULE_PREFIX.as_bytes());
    for (key, _) in map.range(prefix.clone()..) {
        if !key.starts_with(&prefix) {
            break;
        }
        rules
            .presence
            .push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
    }
    Ok(rules)
}
