//! A program running inside a test host's namespace, and the faults a process can suffer:
//! `kill -9`, SIGSTOP/SIGCONT, restart.
//!
//! Processes are started as `ip netns exec NS PROGRAM ...` (which execs, so the child's pid
//! is the program's), in a process group of their own so that a Ctrl-C at the terminal
//! reaches only the harness, which then cleans up. Output goes to a log file per host.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use rustix::process::{kill_process, Pid, Signal};

use crate::net::Host;
use crate::ChaosError;

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Not started, or killed / exited.
    Down,
    /// Running.
    Running,
    /// Stopped with SIGSTOP.
    Paused,
}

/// One program on one test host.
#[derive(Debug)]
pub struct NodeProcess {
    host: Host,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    paused: bool,
}

impl NodeProcess {
    /// Describe a process; nothing runs until [`NodeProcess::start`].
    pub fn new(host: Host, program: &Path, args: Vec<String>, log: PathBuf) -> NodeProcess {
        NodeProcess {
            host,
            program: program.to_path_buf(),
            args,
            log,
            envs: Vec::new(),
            child: None,
            paused: false,
        }
    }

    /// Set an environment variable for every later start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.envs.retain(|(k, _)| k != key);
        self.envs.push((key.to_string(), value.to_string()));
    }

    /// The host it runs on.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Replace the arguments used by the next start.
    pub fn set_args(&mut self, args: Vec<String>) {
        self.args = args;
    }

    /// Its log file (stdout and stderr, appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The pid while running or paused.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Start it. An already running process is left alone.
    pub fn start(&mut self) -> Result<(), ChaosError> {
        if self.state() != ProcessState::Down {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| ChaosError::io(&self.log, e))?;
        let log2 = log.try_clone().map_err(|e| ChaosError::io(&self.log, e))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.host.ns])
            .arg(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|source| ChaosError::Spawn {
                program: "ip netns exec".into(),
                source,
            })?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// `kill -9` and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.paused {
            self.signal_pid(child.id(), Signal::CONT);
        }
        self.signal_pid(child.id(), Signal::TERM);
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        self.paused = false;
    }

    /// SIGSTOP.
    pub fn pause(&mut self) -> Result<(), ChaosError> {
        let pid = self.running_pid("pause")?;
        self.signal_pid(pid, Signal::STOP);
        self.paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self) -> Result<(), ChaosError> {
        if let Some(pid) = self.pid() {
            self.signal_pid(pid, Signal::CONT);
        }
        self.paused = false;
        Ok(())
    }

    /// Running, paused, or down (also when it exited on its own).
    pub fn state(&mut self) -> ProcessState {
        let Some(child) = self.child.as_mut() else {
            return ProcessState::Down;
        };
        match child.try_wait() {
            Ok(None) if self.paused => ProcessState::Paused,
            Ok(None) => ProcessState::Running,
            _ => {
                self.child = None;
                self.paused = false;
                ProcessState::Down
            }
        }
    }

    fn running_pid(&mut self, what: &str) -> Result<u32, ChaosError> {
        match (self.state(), self.pid()) {
            (ProcessState::Running, Some(pid)) => Ok(pid),
            (state, _) => Err(ChaosError::NodeState {
                node: self.host.name.clone(),
                message: format!("cannot {what} a process that is {state:?}"),
            }),
        }
    }

    fn signal_pid(&self, pid: u32, signal: Signal) {
        if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
            // ESRCH (already exited) is not an error here: the state check reports it.
            let _ = kill_process(pid, signal);
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
