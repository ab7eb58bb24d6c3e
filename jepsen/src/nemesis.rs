//! Nemeses: the faults a run injects and heals on a schedule.
//!
//! ```text
//!   |-- quiet --|== fault ==|-- quiet --|== fault ==| ... |-- recovery (all healed) --|
//!               start       stop                            end of time limit
//! ```
//!
//! Each fault is chosen (seeded) from the run's nemesis list, injected, held, then healed;
//! the history records a nemesis `start` and `stop` line around it.

use std::time::Duration;

use firetower_chaos::{Cluster, Partition, ProcessState, WalDamage};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::Rng;

use crate::JepsenError;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NemesisKind {
    /// Random halves: a majority and a minority of managers.
    Partition,
    /// The manager leading the most groups alone in the minority.
    PartitionLeader,
    /// Two sides that cannot hear each other and one manager that hears both.
    Bridge,
    /// One manager's packets are dropped by the others; it still hears them.
    OneWay,
    /// kill -9 a random manager; restart it when healing.
    Kill,
    /// SIGSTOP the manager leading the most groups; SIGCONT when healing.
    Pause,
    /// Restart a random manager (SIGTERM, start on the same data).
    Restart,
    /// Replace a random manager by a new id on a wiped data dir (remove, start, add).
    Wipe,
    /// kill -9 a manager, tear or bit-flip its write-ahead-log tail, start it again.
    WalCorrupt,
    /// Add a spare manager, or remove one when there are more than three.
    Membership,
}

/// Parse `partition,kill`.
pub fn parse_list(list: &str) -> Result<Vec<NemesisKind>, JepsenError> {
    use clap::ValueEnum;
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "none")
        .map(|s| {
            NemesisKind::from_str(s, true).map_err(|_| {
                JepsenError::Usage(format!(
                    "unknown nemesis {s:?}; known: partition, partition-leader, bridge, one-way, \
                     kill, pause, restart, wipe, wal-corrupt, membership (or none)"
                ))
            })
        })
        .collect()
}

/// A fault in force, to be healed.
#[derive(Debug)]
pub enum Active {
    /// nftables rules.
    Partition,
    /// A killed manager.
    Killed(String),
    /// A paused manager.
    Paused(String),
    /// Nothing to undo.
    Done,
}

/// Inject one fault of `kind`; returns what to heal and a description.
pub fn inject(
    kind: NemesisKind,
    cluster: &mut Cluster,
    rng: &mut StdRng,
) -> Result<(Active, String), JepsenError> {
    let members = cluster.member_names();
    let random_member = |rng: &mut StdRng| -> Result<String, JepsenError> {
        members
            .choose(rng)
            .cloned()
            .ok_or_else(|| JepsenError::Usage("no members".into()))
    };
    Ok(match kind {
        NemesisKind::Partition => {
            let p = Partition::random_halves(&members, rng)?;
            cluster.partition(&p)?;
            (Active::Partition, format!("partition {}", p.description))
        }
        NemesisKind::PartitionLeader => {
            let leader = match cluster.busiest_leader() {
                Ok(Some(l)) => l,
                _ => random_member(rng)?,
            };
            let p = Partition::isolate(&leader, &members)?;
            cluster.partition(&p)?;
            (
                Active::Partition,
                format!("partition-leader {}", p.description),
            )
        }
        NemesisKind::Bridge => {
            let p = Partition::bridge(&members, rng)?;
            cluster.partition(&p)?;
            (Active::Partition, p.description)
        }
        NemesisKind::OneWay => {
            let from = random_member(rng)?;
            let p = Partition::one_way(&from, &members);
            cluster.partition(&p)?;
            (Active::Partition, p.description)
        }
        NemesisKind::Kill => {
            let victim = random_member(rng)?;
            cluster.kill(&victim)?;
            (Active::Killed(victim.clone()), format!("kill -9 {victim}"))
        }
        NemesisKind::Pause => {
            let victim = match cluster.busiest_leader() {
                Ok(Some(l)) => l,
                _ => random_member(rng)?,
            };
            cluster.pause(&victim)?;
            (Active::Paused(victim.clone()), format!("pause {victim}"))
        }
        NemesisKind::Restart => {
            let victim = random_member(rng)?;
            cluster.restart(&victim)?;
            (Active::Done, format!("restart {victim}"))
        }
        NemesisKind::Wipe => {
            let victim = random_member(rng)?;
            let id = cluster.replace_with_wiped(&victim)?;
            (
                Active::Done,
                format!("wipe {victim}: replaced by manager id {id} on an empty data dir"),
            )
        }
        NemesisKind::WalCorrupt => {
            let victim = random_member(rng)?;
            cluster.kill(&victim)?;
            let damage = if rng.random_bool(0.5) {
                WalDamage::TornTail {
                    bytes: rng.random_range(1..24),
                }
            } else {
                WalDamage::FlipLastByte
            };
            let what = cluster.damage_wal(&victim, damage)?;
            cluster.start_manager(&victim)?;
            std::thread::sleep(Duration::from_secs(2));
            let state = cluster.manager_state(&victim)?;
            if state != ProcessState::Running {
                return Err(JepsenError::Usage(format!(
                    "{victim} did not start after tail damage ({what}); a damaged tail must be \
                     cut back (see its log)"
                )));
            }
            (
                Active::Done,
                format!("wal-corrupt {victim}: {what}; restarted"),
            )
        }
        NemesisKind::Membership => {
            let spares = cluster.spare_names();
            if members.len() > 3 || spares.is_empty() {
                let victim = random_member(rng)?;
                let id = cluster.manager(&victim)?.id;
                cluster.remove_member(&victim, id)?;
                (
                    Active::Done,
                    format!("membership: removed {victim} (id {id})"),
                )
            } else {
                let newcomer = spares
                    .choose(rng)
                    .cloned()
                    .ok_or_else(|| JepsenError::Usage("no spare".into()))?;
                cluster.add_member(&newcomer)?;
                (Active::Done, format!("membership: added {newcomer}"))
            }
        }
    })
}

/// Undo a fault.
pub fn heal(active: Active, cluster: &mut Cluster) -> Result<(), JepsenError> {
    match active {
        Active::Partition => cluster.heal()?,
        Active::Killed(n) => cluster.start_manager(&n)?,
        Active::Paused(n) => cluster.resume(&n)?,
        Active::Done => {}
    }
    Ok(())
}

/// Heal everything: partitions, paused and dead members.
pub fn heal_all(cluster: &mut Cluster) -> Result<(), JepsenError> {
    cluster.heal()?;
    cluster.revive_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse() {
        assert_eq!(
            parse_list("partition, kill,partition-leader").unwrap(),
            vec![
                NemesisKind::Partition,
                NemesisKind::Kill,
                NemesisKind::PartitionLeader
            ]
        );
        assert!(parse_list("none").unwrap().is_empty());
        assert!(parse_list("gremlins").is_err());
    }
}
