//! What the shim knows about the pod's containers and their processes.

use std::collections::HashMap;

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;
use veil_agent::protocols::oci;

use crate::io::{OutputFifos, StdioPaths};

/// Exit status reported when a process's fate is unknown because its sandbox died.
pub const SANDBOX_DIED_STATUS: u32 = 255;

/// A process's lifecycle as containerd sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
    Stopped,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub status: u32,
    pub at: Timestamp,
}

/// One process: a container's init (`exec_id` empty for containerd) or an exec.
pub struct Proc {
    pub stdio: StdioPaths,
    /// The output fifos' writing ends, opening since create/exec; taken at start.
    pub outputs: Option<OutputFifos>,
    /// An exec's process spec, until it starts.
    pub exec_spec: Option<oci::Process>,
    pub phase: Phase,
    pub exit_tx: watch::Sender<Option<Exit>>,
}

impl Proc {
    /// A process as containerd creates it; must be called within the tokio runtime (the
    /// output fifos start opening).
    pub fn new(stdio: StdioPaths, exec_spec: Option<oci::Process>) -> Self {
        Self {
            outputs: Some(OutputFifos::open(&stdio)),
            stdio,
            exec_spec,
            phase: Phase::Created,
            exit_tx: watch::channel(None).0,
        }
    }

    pub fn exit(&self) -> Option<Exit> {
        self.exit_tx.borrow().clone()
    }

    /// Records the exit once; later calls keep the first.
    pub fn set_exit(&mut self, status: u32) -> Exit {
        if let Some(e) = self.exit() {
            return e;
        }
        let exit = Exit {
            status,
            at: crate::events::now(),
        };
        self.phase = Phase::Stopped;
        self.exit_tx.send_replace(Some(exit.clone()));
        exit
    }
}

/// One container of the pod.
pub struct Container {
    pub bundle: String,
    /// The init process under key "", execs under their ids.
    pub procs: HashMap<String, Proc>,
}

impl Container {
    pub fn init(&self) -> &Proc {
        &self.procs[""]
    }
}

/// The agent's name for a process: the init process is named after its container.
pub fn agent_exec_id<'a>(container_id: &'a str, exec_id: &'a str) -> &'a str {
    if exec_id.is_empty() {
        container_id
    } else {
        exec_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_exit_wins() {
        let mut p = Proc::new(StdioPaths::default(), None);
        let rx = p.exit_tx.subscribe();
        let first = p.set_exit(7);
        let second = p.set_exit(9);
        assert_eq!(first, second);
        assert_eq!(rx.borrow().as_ref().unwrap().status, 7);
        assert_eq!(p.phase, Phase::Stopped);
    }

    #[test]
    fn init_is_named_after_its_container() {
        assert_eq!(agent_exec_id("c1", ""), "c1");
        assert_eq!(agent_exec_id("c1", "e1"), "e1");
    }
}
