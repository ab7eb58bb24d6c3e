//! One Jepsen run: build a cluster on test hosts, start the worker in the client namespace,
//! drive the nemesis schedule, heal, check, and write the report directory.
//!
//! ```text
//!   DIR/config.json     the run's parameters
//!   DIR/history.jsonl   every client and nemesis operation, in time order
//!   DIR/verdict.json    the checker's verdict (+ verdict.txt for humans)
//!   DIR/latency.svg     latency over time, fault windows shaded
//!   DIR/throughput.svg  ok operations per second, fault windows shaded
//!   DIR/logs/           every manager's and gateway's log (gateways: JSON lines)
//! ```

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firetower_chaos::{Cluster, ClusterSpec, HostSpec};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::history::{write_jsonl, Op, OpType, Process};
use crate::nemesis::{heal, heal_all, inject, NemesisKind};
use crate::verdict::Verdict;
use crate::worker::{Clock, WorkerConfig};
use crate::JepsenError;

/// Parameters of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// `subscriptions` or `delivery`.
    pub workload: String,
    /// Faults to choose from.
    pub nemeses: Vec<NemesisKind>,
    /// Seconds of client operations (the last `recovery_secs` are fault-free).
    pub time_limit_secs: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Quiet seconds between faults.
    pub quiet_secs: f64,
    /// Seconds each fault is held.
    pub fault_secs: f64,
    /// Fault-free seconds at the end.
    pub recovery_secs: f64,
    /// Operations per key.
    pub ops_per_key: usize,
    /// Run the managers with `--unsafe-stale-reads` (the harness must then fail).
    pub unsafe_stale_reads: bool,
    /// Run the managers with `--unsafe-stale-leadership` (the delivery checker must then fail).
    pub unsafe_stale_leadership: bool,
    /// The report directory.
    pub out: PathBuf,
    /// The `firetower` binary.
    pub binary: PathBuf,
}

/// Run, check and report. Returns the verdict (whatever it says).
pub fn run(config: &RunConfig) -> Result<Verdict, JepsenError> {
    let out = &config.out;
    std::fs::create_dir_all(out).map_err(|e| JepsenError::io(out, e))?;
    let cfg_path = out.join("config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_string_pretty(config).unwrap_or_default(),
    )
    .map_err(|e| JepsenError::io(&cfg_path, e))?;

    let membership_workload = config.workload == "membership";
    let membership = membership_workload || config.nemeses.contains(&NemesisKind::Membership);
    let mut spec = ClusterSpec::new(config.binary.clone(), out.clone());
    spec.tag = "ftj".into();
    spec.hosts = HostSpec {
        managers: if membership { 5 } else { 3 },
        // Delivery: subscribers on g1 and g2, publishers mostly on g3.
        gateways: if config.workload == "delivery" { 3 } else { 0 },
        clients: 1,
    };
    spec.initial_managers = 3;
    spec.start_gateways = config.workload == "delivery";
    if config.unsafe_stale_reads {
        spec.manager_flags.push("--unsafe-stale-reads".into());
    }
    if config.unsafe_stale_leadership {
        spec.manager_flags.push("--unsafe-stale-leadership".into());
    }
    let mut cluster = Cluster::start(spec)?;
    let history = Arc::new(Mutex::new(Vec::<Op>::new()));

    let t0 = firetower_chaos::unix_ms();
    let clock = Clock::new(t0);
    let worker_config = WorkerConfig {
        // The membership workload runs the subscriptions clients; the runner itself makes
        // and records the membership changes.
        workload: if membership_workload {
            "subscriptions".into()
        } else {
            config.workload.clone()
        },
        managers: cluster.quic_addrs(),
        gateways: cluster.gateway_addrs(),
        concurrency: config.concurrency,
        time_limit_secs: config.time_limit_secs as f64,
        seed: config.seed,
        t0_unix_ms: t0,
        ops_per_key: config.ops_per_key,
        gateway_ids: 4,
        interval_ms: 20,
        tls_dir: cluster.tls_dir(),
    };
    let client = cluster.client_host()?.clone();
    let worker_json = serde_json::to_string(&worker_config).unwrap_or_default();
    let worker_log = out.join("logs").join("worker.log");
    let worker_stderr =
        std::fs::File::create(&worker_log).map_err(|e| JepsenError::io(&worker_log, e))?;
    let mut worker = Command::new("ip")
        .args(["netns", "exec", &client.ns])
        .arg(&config.binary)
        .args(["jepsen", "worker", "--config", &worker_json])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(worker_stderr)
        .spawn()
        .map_err(|e| JepsenError::Worker(format!("cannot start: {e}")))?;
    let reader = {
        let history = history.clone();
        let stdout = worker
            .stdout
            .take()
            .ok_or_else(|| JepsenError::Worker("no stdout".into()))?;
        std::thread::spawn(move || {
            let mut bad = 0usize;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Op>(&line) {
                    Ok(op) => history.lock().unwrap_or_else(|e| e.into_inner()).push(op),
                    Err(_) => bad += 1,
                }
            }
            bad
        })
    };

    // The nemesis schedule.
    let mut rng = StdRng::seed_from_u64(config.seed);
    let nemesis_op = |f: &str, value: String| Op {
        index: 0,
        process: Process::Named("nemesis".into()),
        kind: OpType::Info,
        f: f.into(),
        key: None,
        value: value.into(),
        time_ns: clock.now_ns(),
        error: None,
    };
    let push = |op: Op| history.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    let limit = config.time_limit_secs as f64;
    let started = Instant::now();
    let elapsed = || started.elapsed().as_secs_f64();
    let mut nemesis_error = None;
    if !config.nemeses.is_empty() || membership_workload {
        loop {
            sleep_until(&started, elapsed() + config.quiet_secs);
            if elapsed() + config.fault_secs + config.recovery_secs > limit {
                break;
            }
            if membership_workload {
                for op in membership_change(&mut cluster, &mut rng, &clock) {
                    push(op);
                }
                if config.nemeses.is_empty() {
                    continue;
                }
            }
            let Some(&kind) = config.nemeses.choose(&mut rng) else {
                break;
            };
            if membership_workload && kind == NemesisKind::Membership {
                // The membership workload records every change it checks; a membership fault
                // is made (and recorded) the same way, or the final voters could not be
                // explained.
                let what = "membership change (recorded by the membership workload)";
                let mut op = nemesis_op("start", what.into());
                op.time_ns = clock.now_ns();
                push(op);
                for op in membership_change(&mut cluster, &mut rng, &clock) {
                    push(op);
                }
                sleep_until(&started, elapsed() + config.fault_secs);
                push(nemesis_op("stop", what.into()));
                continue;
            }
            let begin = clock.now_ns();
            let ids_before = member_ids(&cluster);
            match inject(kind, &mut cluster, &mut rng) {
                Ok((active, what)) => {
                    let mut op = nemesis_op("start", what.clone());
                    op.time_ns = begin;
                    push(op);
                    if membership_workload {
                        // A wipe replaces a member by a new id: record that as the membership
                        // changes it is, or the final voters could not be explained.
                        for op in
                            replaced_members(&ids_before, &member_ids(&cluster), begin, &clock)
                        {
                            push(op);
                        }
                    }
                    tracing::info!(fault = %what, "nemesis start");
                    sleep_until(&started, elapsed() + config.fault_secs);
                    let r = heal(active, &mut cluster);
                    push(nemesis_op("stop", what));
                    if let Err(e) = r {
                        nemesis_error = Some(e);
                        break;
                    }
                }
                Err(e) => {
                    push(nemesis_op("error", format!("{kind:?}: {e}")));
                    tracing::warn!(error = %e, "nemesis failed; healing and stopping faults");
                    nemesis_error = Some(e);
                    break;
                }
            }
        }
    }
    let healed = heal_all(&mut cluster);
    push(nemesis_op("heal-all", "every fault healed".into()));
    if membership_workload {
        push(final_members(&cluster, &clock));
    }

    // Let the worker finish (it stops at the time limit), then stop everything.
    let deadline = started + Duration::from_secs_f64(limit + 30.0);
    loop {
        match worker.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = worker.kill();
                let _ = worker.wait();
                break;
            }
        }
    }
    let worker_status = worker.wait().ok();
    let bad_lines = reader.join().unwrap_or(0);
    // Session gaps of the gateways (the `session_up` / `session_down` events of their JSON
    // logs) tell the delivery checker when a gateway had no session with a manager.
    for (i, name) in cluster.gateway_names().iter().enumerate() {
        let Ok(path) = cluster.gateway_log(name) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(&path) {
            for op in crate::delivery::session_ops(&text, i as u64 + 1, t0) {
                push(op);
            }
        }
    }
    cluster.teardown();
    drop(cluster);
    let _ = std::fs::remove_dir_all(out.join("data"));
    healed?;
    if let Some(e) = nemesis_error {
        return Err(e);
    }

    let mut history = std::mem::take(&mut *history.lock().unwrap_or_else(|e| e.into_inner()));
    history.sort_by_key(|o| o.time_ns);
    for (i, op) in history.iter_mut().enumerate() {
        op.index = i as u64;
    }
    write_jsonl(&out.join("history.jsonl"), &history)?;
    if !history
        .iter()
        .any(|o| o.is_client() && o.kind == OpType::Ok)
    {
        return Err(JepsenError::Worker(format!(
            "the worker recorded no successful operation (exit {worker_status:?}, {bad_lines} \
             unreadable lines); see {}",
            worker_log.display()
        )));
    }
    let verdict = crate::check::check(&config.workload, &history)?;
    crate::check::write_report(out, &history, &verdict, &config.workload)?;
    Ok(verdict)
}

/// One recorded membership change: remove a member when there are more than three (or no
/// spare), otherwise add a spare. An error is an unknown outcome (`info`): the change may
/// have reached some groups.
fn membership_change(cluster: &mut Cluster, rng: &mut StdRng, clock: &Clock) -> Vec<Op> {
    use crate::membership::op;
    let members = cluster.member_names();
    let spares = cluster.spare_names();
    let (f, name) = if members.len() > 3 || spares.is_empty() {
        ("remove", members.choose(rng).cloned())
    } else {
        ("add", spares.choose(rng).cloned())
    };
    let Some(name) = name else {
        return Vec::new();
    };
    let Ok(id) = cluster.manager(&name).map(|m| m.id) else {
        return Vec::new();
    };
    let value = serde_json::json!({ "manager": id });
    let invoke = op(OpType::Invoke, f, value.clone(), clock.now_ns(), None);
    let result = if f == "add" {
        cluster.add_member(&name)
    } else {
        cluster.remove_member(&name, id)
    };
    tracing::info!(
        change = f,
        manager = id,
        ok = result.is_ok(),
        "membership change"
    );
    let done = match result {
        Ok(()) => op(OpType::Ok, f, value, clock.now_ns(), None),
        Err(e) => op(OpType::Info, f, value, clock.now_ns(), Some(e.to_string())),
    };
    vec![invoke, done]
}

/// Host name -> manager id of every current member.
fn member_ids(cluster: &Cluster) -> std::collections::BTreeMap<String, u64> {
    cluster
        .member_names()
        .into_iter()
        .filter_map(|n| cluster.manager(&n).ok().map(|m| (n.clone(), m.id)))
        .collect()
}

/// Membership operations for members a fault replaced (same host, new id): the removal of
/// the old id and the addition of the new one, both done by the time the fault returned.
fn replaced_members(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    begin: u64,
    clock: &Clock,
) -> Vec<Op> {
    use crate::membership::op;
    let now = clock.now_ns();
    let mut ops = Vec::new();
    for (host, old) in before {
        match after.get(host) {
            Some(new) if new != old => {
                for (f, id) in [("remove", *old), ("add", *new)] {
                    let value = serde_json::json!({ "manager": id });
                    ops.push(op(OpType::Invoke, f, value.clone(), begin, None));
                    ops.push(op(OpType::Ok, f, value, now, None));
                }
            }
            _ => {}
        }
    }
    ops
}

/// The final `cluster members` read of the membership workload, after every fault healed;
/// retried for a while, since groups may still be electing.
fn final_members(cluster: &Cluster, clock: &Clock) -> Op {
    use crate::membership::{members_value, op};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = cluster.members();
        let settled = read
            .as_ref()
            .is_ok_and(|m| m.groups.iter().all(|g| g.leader.is_some()));
        match read {
            Ok(m) if settled || Instant::now() >= deadline => {
                return op(
                    OpType::Ok,
                    "members",
                    members_value(&m),
                    clock.now_ns(),
                    None,
                )
            }
            Err(e) if Instant::now() >= deadline => {
                return op(
                    OpType::Fail,
                    "members",
                    serde_json::Value::Null,
                    clock.now_ns(),
                    Some(e.to_string()),
                )
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn sleep_until(started: &Instant, at_secs: f64) {
    let target = *started + Duration::from_secs_f64(at_secs.max(0.0));
    let now = Instant::now();
    if target > now {
        std::thread::sleep(target - now);
    }
}
