//! Task events published to containerd (CRI learns of exits only through them).

use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::topics;

/// Publishes to containerd's event service in the shim's namespace.
#[derive(Clone)]
pub struct Events {
    publisher: std::sync::Arc<RemotePublisher>,
    namespace: String,
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: String) -> Self {
        Self {
            publisher: std::sync::Arc::new(publisher),
            namespace,
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(
                containerd_shim::Context::default(),
                topic,
                &self.namespace,
                event,
            )
            .await
        {
            tracing::warn!(topic, error = %e, "event not published");
        }
    }

    pub async fn created(&self, id: &str, bundle: &str, pid: u32) {
        let ev = TaskCreate {
            container_id: id.into(),
            bundle: bundle.into(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn started(&self, id: &str, pid: u32) {
        let ev = TaskStart {
            container_id: id.into(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn exec_added(&self, id: &str, exec_id: &str) {
        let ev = TaskExecAdded {
            container_id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn exec_started(&self, id: &str, exec_id: &str, pid: u32) {
        let ev = TaskExecStarted {
            container_id: id.into(),
            exec_id: exec_id.into(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    /// `process_id` is the exec id, or the container id for the init process.
    pub async fn exited(&self, id: &str, process_id: &str, pid: u32, status: u32, at: &Timestamp) {
        let ev = TaskExit {
            container_id: id.into(),
            id: process_id.into(),
            pid,
            exit_status: status,
            exited_at: protobuf::MessageField::some(at.clone()),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    /// The OOM killer hit a process of container `id` (containerd's `/tasks/oom`; CRI
    /// reports the container's exit reason as `OOMKilled`).
    pub async fn oom(&self, id: &str) {
        let ev = TaskOOM {
            container_id: id.into(),
            ..Default::default()
        };
        self.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn deleted(&self, id: &str, pid: u32, status: u32, at: &Timestamp) {
        let ev = TaskDelete {
            container_id: id.into(),
            id: id.into(),
            pid,
            exit_status: status,
            exited_at: protobuf::MessageField::some(at.clone()),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev))
            .await;
    }
}

/// Now, as a protobuf timestamp.
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}
