//! Network partitions as sets of blocked directed links, applied with nftables.
//!
//! A [`Partition`] is pure data: "packets from A do not reach B" for some pairs. Building one
//! (random halves, an isolated node, a bridge, one-way) and rendering the nftables rules of
//! each host are plain functions, tested without a network. [`apply`] loads the rules into
//! each host's own namespace (table `inet firetower_chaos`, an input-hook drop by source
//! address); [`heal`] deletes the table. Nothing is ever loaded into the host's namespace.
//!
//! ```text
//!   halves        {m1,m2} | {m3}        both directions blocked
//!   isolate(m1)   {m1} | {m2,m3}
//!   bridge        {m1} - m2 - {m3}      m2 hears both sides, m1 and m3 do not hear each other
//!   one-way       m1 -x-> {m2,m3}       m2, m3 drop what m1 sends; m1 still hears them
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::cmd::{run_in, run_with_stdin};
use crate::net::Host;
use crate::ChaosError;

/// The nftables table every rule of this library lives in (inside the test namespaces).
pub const NFT_TABLE: &str = "firetower_chaos";

/// Blocked directed links between named hosts: `(from, to)` means `to` drops what `from`
/// sends.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// A short human description (`halves [m1 m2] | [m3]`).
    pub description: String,
    /// The blocked links.
    pub blocked: BTreeSet<(String, String)>,
}

impl Partition {
    /// Cut the hosts into the given components: no traffic between different components.
    pub fn components(parts: &[Vec<String>]) -> Partition {
        let mut blocked = BTreeSet::new();
        for (i, a) in parts.iter().enumerate() {
            for (j, b) in parts.iter().enumerate() {
                if i == j {
                    continue;
                }
                for x in a {
                    for y in b {
                        blocked.insert((x.clone(), y.clone()));
                    }
                }
            }
        }
        let description = parts
            .iter()
            .map(|p| format!("[{}]", p.join(" ")))
            .collect::<Vec<_>>()
            .join(" | ");
        Partition {
            description,
            blocked,
        }
    }

    /// Random halves: a strict majority of `n/2 + 1` hosts and the rest.
    pub fn random_halves(nodes: &[String], rng: &mut impl Rng) -> Result<Partition, ChaosError> {
        if nodes.len() < 2 {
            return Err(ChaosError::InvalidFault(
                "halves need at least 2 nodes".into(),
            ));
        }
        let mut shuffled = nodes.to_vec();
        shuffled.shuffle(rng);
        // A strict majority (n/2 + 1) and the rest; two nodes split one and one.
        let cut = (shuffled.len() / 2 + 1).min(shuffled.len() - 1);
        let minority = shuffled.split_off(cut);
        let mut p = Partition::components(&[minority, shuffled]);
        p.description = format!("halves {}", p.description);
        Ok(p)
    }

    /// `node` alone on one side, every other node on the other (a leader isolated in the
    /// minority when `node` leads).
    pub fn isolate(node: &str, nodes: &[String]) -> Result<Partition, ChaosError> {
        if !nodes.iter().any(|n| n == node) {
            return Err(ChaosError::UnknownNode(node.to_string()));
        }
        let rest: Vec<String> = nodes.iter().filter(|n| *n != node).cloned().collect();
        let mut p = Partition::components(&[vec![node.to_string()], rest]);
        p.description = format!("isolate {}", p.description);
        Ok(p)
    }

    /// A bridge: two sides that cannot hear each other and one node (random) that hears
    /// both. Needs at least 3 nodes.
    pub fn bridge(nodes: &[String], rng: &mut impl Rng) -> Result<Partition, ChaosError> {
        if nodes.len() < 3 {
            return Err(ChaosError::InvalidFault(
                "a bridge needs at least 3 nodes".into(),
            ));
        }
        let mut shuffled = nodes.to_vec();
        shuffled.shuffle(rng);
        let Some(bridge) = shuffled.pop() else {
            return Err(ChaosError::InvalidFault("no nodes".into()));
        };
        let right = shuffled.split_off(shuffled.len() / 2);
        let mut p = Partition::components(&[shuffled.clone(), right.clone()]);
        p.description = format!(
            "bridge [{}] - {bridge} - [{}]",
            shuffled.join(" "),
            right.join(" ")
        );
        Ok(p)
    }

    /// One-way: every node of `deaf` drops what `from` sends; `from` still hears them.
    pub fn one_way(from: &str, deaf: &[String]) -> Partition {
        let deaf: Vec<String> = deaf.iter().filter(|d| *d != from).cloned().collect();
        let blocked = deaf.iter().map(|d| (from.to_string(), d.clone())).collect();
        Partition {
            description: format!("one-way {from} -x-> [{}]", deaf.join(" ")),
            blocked,
        }
    }

    /// True when packets from `from` reach `to`.
    pub fn allows(&self, from: &str, to: &str) -> bool {
        !self.blocked.contains(&(from.to_string(), to.to_string()))
    }

    /// Per receiving host, the sources it must drop.
    pub fn drops_by_host(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in &self.blocked {
            out.entry(to.clone()).or_default().insert(from.clone());
        }
        out
    }
}

/// The nftables script that makes a host drop packets from `sources`. Loading it replaces
/// any earlier rules of this library atomically (`add` + `delete` + define, one transaction).
pub fn nft_script(sources: &[Ipv4Addr]) -> String {
    let mut s = format!("add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n");
    s.push_str(&format!("table inet {NFT_TABLE} {{\n"));
    s.push_str("  chain input {\n    type filter hook input priority -100; policy accept;\n");
    if !sources.is_empty() {
        let list = sources
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        s.push_str(&format!("    ip saddr {{ {list} }} drop\n"));
    }
    s.push_str("  }\n}\n");
    s
}

/// Load `partition` into the hosts' namespaces. Hosts not named in it lose any earlier rules.
pub(crate) fn apply(partition: &Partition, hosts: &[Host]) -> Result<(), ChaosError> {
    ensure_nft()?;
    let drops = partition.drops_by_host();
    for host in hosts {
        let sources: Vec<Ipv4Addr> = drops
            .get(&host.name)
            .map(|from| {
                from.iter()
                    .filter_map(|f| hosts.iter().find(|h| &h.name == f).map(|h| h.ip))
                    .collect()
            })
            .unwrap_or_default();
        if sources.is_empty() {
            heal_host(host)?;
            continue;
        }
        let script = nft_script(&sources);
        run_with_stdin(
            "ip",
            &["netns", "exec", &host.ns, "nft", "-f", "-"],
            Some(&script),
        )?;
    }
    Ok(())
}

/// Remove every rule of this library from the hosts.
pub(crate) fn heal(hosts: &[Host]) -> Result<(), ChaosError> {
    for host in hosts {
        heal_host(host)?;
    }
    Ok(())
}

fn heal_host(host: &Host) -> Result<(), ChaosError> {
    // `add` first so that the delete never fails on a host without rules.
    let script = format!("add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n");
    run_with_stdin(
        "ip",
        &["netns", "exec", &host.ns, "nft", "-f", "-"],
        Some(&script),
    )?;
    Ok(())
}

/// The nftables tables in namespace `ns` (`inet firetower_chaos`, ...).
pub fn tables_in(ns: &str) -> Result<Vec<String>, ChaosError> {
    let out = run_in(ns, "nft", &["list", "tables"])?;
    Ok(out.lines().map(|l| l.trim().to_string()).collect())
}

/// Fail with [`ChaosError::NoNft`] when `nft` is not installed.
pub fn ensure_nft() -> Result<(), ChaosError> {
    match std::process::Command::new("nft")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        _ => Err(ChaosError::NoNft),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn halves_leave_a_strict_majority() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for n in 3..7 {
            let p = Partition::random_halves(&names(n), &mut rng).unwrap();
            let nodes = names(n);
            // Nodes that hear each other form components; the largest is a majority.
            let mut sizes = Vec::new();
            let mut seen = BTreeSet::new();
            for a in &nodes {
                if seen.contains(a) {
                    continue;
                }
                let comp: Vec<_> = nodes
                    .iter()
                    .filter(|b| *b == a || (p.allows(a, b) && p.allows(b, a)))
                    .cloned()
                    .collect();
                seen.extend(comp.iter().cloned());
                sizes.push(comp.len());
            }
            sizes.sort();
            assert_eq!(sizes.len(), 2, "{p:?}");
            assert!(sizes[1] > n / 2, "{sizes:?}");
        }
    }

    #[test]
    fn isolation_cuts_one_node_both_ways() {
        let p = Partition::isolate("m2", &names(3)).unwrap();
        assert!(!p.allows("m2", "m1") && !p.allows("m1", "m2"));
        assert!(!p.allows("m2", "m3") && !p.allows("m3", "m2"));
        assert!(p.allows("m1", "m3"));
        assert!(Partition::isolate("m9", &names(3)).is_err());
    }

    #[test]
    fn bridge_node_hears_both_sides() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let nodes = names(5);
        let p = Partition::bridge(&nodes, &mut rng).unwrap();
        let bridges: Vec<_> = nodes
            .iter()
            .filter(|b| nodes.iter().all(|o| p.allows(o, b) && p.allows(b, o)))
            .collect();
        assert_eq!(bridges.len(), 1, "{p:?}");
        assert!(!p.blocked.is_empty());
    }

    #[test]
    fn one_way_blocks_one_direction() {
        let p = Partition::one_way("m1", &names(3));
        assert!(!p.allows("m1", "m2"));
        assert!(p.allows("m2", "m1"));
        assert!(p.allows("m1", "m1"));
    }

    #[test]
    fn script_replaces_rules_atomically() {
        let s = nft_script(&[Ipv4Addr::new(10, 77, 0, 12), Ipv4Addr::new(10, 77, 0, 13)]);
        assert!(s.starts_with("add table inet firetower_chaos\ndelete table"));
        assert!(s.contains("ip saddr { 10.77.0.12, 10.77.0.13 } drop"));
    }
}
