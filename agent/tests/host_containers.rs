//! The agent as a host process on a Unix socket runs a busybox container from an ext4 image
//! on a loop device: create, start, stdout/stderr, stdin, exec, signal, stats, wait, remove,
//! and nothing is left behind. Needs root, e2fsprogs and busybox-static (skips otherwise).

mod common;

use common::*;
use veil_agent::protocols::agent;

async fn ready_agent() -> (AgentProcess, veil_agent::client::AgentClient) {
    let mut agent = AgentProcess::start(&sha256_hex(ALLOW_ALL));
    let client = agent.connect().await;
    let mut set = agent::SetPolicyRequest::new();
    set.policy = ALLOW_ALL.into();
    client.agent.set_policy(ctx(), &set).await.unwrap();
    client
        .agent
        .create_sandbox(ctx(), &agent::CreateSandboxRequest::new())
        .await
        .unwrap();
    (agent, client)
}

fn exec_req(id: &str, exec_id: &str, args: &[&str]) -> agent::ExecProcessRequest {
    let mut r = agent::ExecProcessRequest::new();
    r.container_id = id.into();
    r.exec_id = exec_id.into();
    r.process = protobuf::MessageField::some(process(args));
    r
}

fn wait_req(id: &str, exec_id: &str) -> agent::WaitProcessRequest {
    let mut r = agent::WaitProcessRequest::new();
    r.container_id = id.into();
    r.exec_id = exec_id.into();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_container_lifecycle_leaves_nothing_behind() {
    require_host!();
    let image = BusyboxImage::new();
    let (agent, client) = ready_agent().await;
    let id = "lifecycle";

    // The init process greets, then echoes stdin until it is closed, then exits 0.
    let create = create_request(
        id,
        &image.device,
        &[
            "sh",
            "-c",
            "echo hello from $(hostname) as pid $$; echo oops >&2; cat; exit 0",
        ],
    );
    client.agent.create_container(ctx(), &create).await.unwrap();
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client.agent.start_container(ctx(), &start).await.unwrap();

    let out = read_until(&client, id, id, "\n").await;
    // Its own UTS namespace (hostname) and PID namespace (it is PID 1 there).
    assert_eq!(out, "hello from veil-test as pid 1\n");

    // stdin reaches the process and comes back through cat.
    let mut write = agent::WriteStreamRequest::new();
    write.container_id = id.into();
    write.exec_id = id.into();
    write.data = b"ping\n".to_vec();
    let written = client.agent.write_stdin(ctx(), &write).await.unwrap();
    assert_eq!(written.len, 5);
    assert_eq!(read_until(&client, id, id, "ping\n").await, "ping\n");

    // An exec'd process runs inside the container's root and namespaces.
    let exec = exec_req(
        id,
        "ls",
        &[
            "sh",
            "-c",
            "ls /bin/busybox; hostname; cat /proc/1/cmdline; exit 7",
        ],
    );
    client.agent.exec_process(ctx(), &exec).await.unwrap();
    assert_eq!(
        read_all(&client, id, "ls", false).await,
        // /proc/1 in its PID namespace is the container's init (sh), not the guest's.
        "/bin/busybox\nveil-test\nsh\0-c\0echo hello from $(hostname) as pid $$; echo oops >&2; cat; exit 0\0"
    );
    let status = client
        .agent
        .wait_process(ctx(), &wait_req(id, "ls"))
        .await
        .unwrap();
    assert_eq!(status.status, 7);

    // A second exec is signalled: SIGTERM -> 128 + 15.
    let sleeper = exec_req(id, "sleeper", &["sleep", "1000"]);
    client.agent.exec_process(ctx(), &sleeper).await.unwrap();
    let stats = client
        .agent
        .stats_container(ctx(), &{
            let mut r = agent::StatsContainerRequest::new();
            r.container_id = id.into();
            r
        })
        .await
        .unwrap();
    let pids_in_container = stats.cgroup_stats.pids_stats.current;
    assert!(
        pids_in_container >= 2,
        "init and sleeper at least, got {pids_in_container}"
    );
    let procs: Vec<i32> = std::fs::read_to_string(cgroup_dir(id).join("cgroup.procs"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(procs.len() >= 2, "{procs:?}");

    let mut sig = agent::SignalProcessRequest::new();
    sig.container_id = id.into();
    sig.exec_id = "sleeper".into();
    sig.signal = 15;
    client.agent.signal_process(ctx(), &sig).await.unwrap();
    let status = client
        .agent
        .wait_process(ctx(), &wait_req(id, "sleeper"))
        .await
        .unwrap();
    assert_eq!(status.status, 128 + 15);

    // Closing stdin ends cat; the init process exits 0; stderr carried "oops".
    let mut close = agent::CloseStdinRequest::new();
    close.container_id = id.into();
    close.exec_id = id.into();
    client.agent.close_stdin(ctx(), &close).await.unwrap();
    let status = client
        .agent
        .wait_process(ctx(), &wait_req(id, id))
        .await
        .unwrap();
    assert_eq!(status.status, 0);
    assert_eq!(read_all(&client, id, id, true).await, "oops\n");

    remove_container(&client, id).await;

    assert_eq!(mounts_under(&agent.state_dir), Vec::<String>::new());
    assert!(!cgroup_dir(id).exists(), "cgroup left behind");
    assert!(
        !agent.state_dir.join(id).exists(),
        "state directory left behind"
    );
    for pid in procs {
        assert!(!pid_alive(pid), "process {pid} left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_kills_a_running_container() {
    require_host!();
    let image = BusyboxImage::new();
    let (agent, client) = ready_agent().await;
    let id = "killme";
    let create = create_request(id, &image.device, &["sleep", "1000"]);
    client.agent.create_container(ctx(), &create).await.unwrap();
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client.agent.start_container(ctx(), &start).await.unwrap();
    let procs = std::fs::read_to_string(cgroup_dir(id).join("cgroup.procs")).unwrap();
    let pid: i32 = procs.lines().next().unwrap().parse().unwrap();
    assert!(pid_alive(pid));

    remove_container(&client, id).await;
    assert!(
        !pid_alive(pid),
        "container process survived RemoveContainer"
    );
    assert!(mounts_under(&agent.state_dir).is_empty());
    assert!(!cgroup_dir(id).exists());

    // Gone means gone: a second remove names the unknown id.
    let mut remove = agent::RemoveContainerRequest::new();
    remove.container_id = id.into();
    let (code, msg) = status_of(client.agent.remove_container(ctx(), &remove).await);
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    assert!(msg.contains(id), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_process_gets_a_pty_that_can_be_resized() {
    require_host!();
    let image = BusyboxImage::new();
    let (_agent, client) = ready_agent().await;
    let id = "tty";
    let mut create = create_request(id, &image.device, &["sh"]);
    {
        let p = create.OCI.as_mut().unwrap().Process.as_mut().unwrap();
        p.Terminal = true;
    }
    client.agent.create_container(ctx(), &create).await.unwrap();
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client.agent.start_container(ctx(), &start).await.unwrap();

    let mut resize = agent::TtyWinResizeRequest::new();
    resize.container_id = id.into();
    resize.exec_id = id.into();
    resize.row = 33;
    resize.column = 101;
    client.agent.tty_win_resize(ctx(), &resize).await.unwrap();

    // The shell sees a terminal of the new size on its stdin, and exits with our code.
    let mut write = agent::WriteStreamRequest::new();
    write.container_id = id.into();
    write.exec_id = id.into();
    write.data = b"[ -t 0 ] && echo IS-A-TTY; echo SIZE=$(stty size); exit 5\n".to_vec();
    client.agent.write_stdin(ctx(), &write).await.unwrap();
    let out = read_until(&client, id, id, "SIZE=33 101").await;
    // The terminal echoes the typed line too; the answer is a line of its own (CR LF).
    assert!(out.contains("\nIS-A-TTY\r\n"), "{out:?}");
    assert_eq!(wait_status(&client, id, id).await, 5);

    remove_container(&client, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_limits_are_applied_or_refused_never_dropped() {
    require_host!();
    let image = BusyboxImage::new();
    let (agent, client) = ready_agent().await;
    let id = "limits";
    let mut create = create_request(id, &image.device, &["true"]);
    {
        let mut pids = veil_agent::protocols::oci::LinuxPids::new();
        pids.Limit = 42;
        let mut resources = veil_agent::protocols::oci::LinuxResources::new();
        resources.Pids = protobuf::MessageField::some(pids);
        let mut linux = veil_agent::protocols::oci::Linux::new();
        linux.Resources = protobuf::MessageField::some(resources);
        create.OCI.as_mut().unwrap().Linux = protobuf::MessageField::some(linux);
    }
    let root = veil_agent::container::detect_cgroup_root().unwrap();
    let pids_controller = std::fs::read_to_string(root.join("cgroup.controllers"))
        .unwrap()
        .split_whitespace()
        .any(|c| c == "pids")
        || cgroup_dir(id)
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("pids.max")
            .exists()
        || std::path::Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists();
    let result = client.agent.create_container(ctx(), &create).await;
    if pids_controller {
        result.unwrap();
        let max = std::fs::read_to_string(cgroup_dir(id).join("pids.max")).unwrap();
        assert_eq!(max.trim(), "42");
        let mut stats_req = agent::StatsContainerRequest::new();
        stats_req.container_id = id.into();
        let stats = client
            .agent
            .stats_container(ctx(), &stats_req)
            .await
            .unwrap();
        assert_eq!(stats.cgroup_stats.pids_stats.limit, 42);
        remove_container(&client, id).await;
    } else {
        eprintln!("this host's cgroup v2 has no pids controller: checking the refusal");
        let (code, msg) = status_of(result);
        assert_eq!(code, ttrpc::Code::INTERNAL, "{msg}");
        assert!(msg.contains("pids.max"), "{msg}");
    }
    assert!(!cgroup_dir(id).exists());
    assert!(mounts_under(&agent.state_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erofs_root_layer_works_too() {
    require_host!();
    if !std::path::Path::new("/usr/bin/mkfs.erofs").exists() {
        veil_tests::skip_or_fail("mkfs.erofs missing (apt-get install erofs-utils)");
        return;
    }
    let image = BusyboxImage::erofs();
    let (agent, client) = ready_agent().await;
    let id = "erofs";
    let mut create = create_request(
        id,
        &image.device,
        &[
            "sh",
            "-c",
            "echo written > /tmp/f; cat /tmp/f; echo on-erofs > /etc/x && cat /etc/x",
        ],
    );
    create.storages[0].fstype = "erofs".into();
    client.agent.create_container(ctx(), &create).await.unwrap();
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client.agent.start_container(ctx(), &start).await.unwrap();
    // The read-only layer is writable through the overlay.
    assert_eq!(
        read_all(&client, id, id, false).await,
        "written\non-erofs\n"
    );
    let status = client
        .agent
        .wait_process(ctx(), &wait_req(id, id))
        .await
        .unwrap();
    assert_eq!(status.status, 0);
    remove_container(&client, id).await;
    assert!(mounts_under(&agent.state_dir).is_empty());
    assert!(!cgroup_dir(id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_capabilities_no_new_privs_and_rlimits_are_applied() {
    require_host!();
    let image = BusyboxImage::new();
    let (_agent, client) = ready_agent().await;
    let id = "creds";
    let mut create = create_request(
        id,
        &image.device,
        &[
            "sh",
            "-c",
            "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); \
             grep -E '^(NoNewPrivs|CapEff|CapPrm|CapBnd):' /proc/self/status; \
             echo nofile=$(ulimit -n); echo cwd=$(pwd)",
        ],
    );
    {
        use veil_agent::protocols::oci;
        let p = create.OCI.as_mut().unwrap().Process.as_mut().unwrap();
        let mut user = oci::User::new();
        user.UID = 1000;
        user.GID = 1001;
        user.AdditionalGids = vec![1002];
        p.User = protobuf::MessageField::some(user);
        p.NoNewPrivileges = true;
        p.Cwd = "/tmp".into();
        let mut caps = oci::LinuxCapabilities::new();
        // CAP_KILL is bit 5, CAP_NET_BIND_SERVICE bit 10: 0x420.
        caps.Bounding = vec!["CAP_KILL".into(), "CAP_NET_BIND_SERVICE".into()];
        caps.Permitted = caps.Bounding.clone();
        caps.Effective = vec!["CAP_KILL".into()];
        // For a non-root user only ambient capabilities survive execve (kernel rules), so
        // CAP_KILL is made ambient (which needs it inheritable too).
        caps.Inheritable = vec!["CAP_KILL".into()];
        caps.Ambient = vec!["CAP_KILL".into()];
        p.Capabilities = protobuf::MessageField::some(caps);
        let mut nofile = oci::POSIXRlimit::new();
        nofile.Type = "RLIMIT_NOFILE".into();
        nofile.Hard = 123;
        nofile.Soft = 77;
        p.Rlimits = vec![nofile];
    }
    client.agent.create_container(ctx(), &create).await.unwrap();
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client.agent.start_container(ctx(), &start).await.unwrap();
    let out = read_all(&client, id, id, false).await;
    let expected = "uid=1000 gid=1001 groups=1001 1002\n\
                    CapPrm:\t0000000000000020\n\
                    CapEff:\t0000000000000020\n\
                    CapBnd:\t0000000000000420\n\
                    NoNewPrivs:\t1\n\
                    nofile=77\n\
                    cwd=/tmp\n";
    assert_eq!(out, expected);
    remove_container(&client, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_removes_every_container_before_the_agent_exits() {
    require_host!();
    let image = BusyboxImage::new();
    let (mut agent, client) = ready_agent().await;
    let id = "sigterm";
    let create = create_request(id, &image.device, &["sleep", "1000"]);
    client.agent.create_container(ctx(), &create).await.unwrap();
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client.agent.start_container(ctx(), &start).await.unwrap();
    let pid: i32 = std::fs::read_to_string(cgroup_dir(id).join("cgroup.procs"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    agent.terminate();
    assert!(agent.wait_exit().success());
    assert!(!pid_alive(pid), "container process outlived the agent");
    assert!(mounts_under(&agent.state_dir).is_empty());
    assert!(!cgroup_dir(id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_pause_and_resume_reach_the_cgroup() {
    require_host!();
    let image = BusyboxImage::new();
    let (agent, client) = ready_agent().await;
    let id = "pauseme";
    let create = create_request(id, &image.device, &["sleep", "1000"]);
    client.agent.create_container(ctx(), &create).await.unwrap();
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client.agent.start_container(ctx(), &start).await.unwrap();

    let mut pids = veil_agent::protocols::oci::LinuxPids::new();
    pids.Limit = 17;
    let mut update = agent::UpdateContainerRequest::new();
    update.container_id = id.into();
    update.resources.mut_or_insert_default().Pids = protobuf::MessageField::some(pids);
    client.agent.update_container(ctx(), &update).await.unwrap();
    let max = std::fs::read_to_string(cgroup_dir(id).join("pids.max")).unwrap();
    assert_eq!(max.trim(), "17");

    let pid: i32 = std::fs::read_to_string(cgroup_dir(id).join("cgroup.procs"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let state = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Field 3, after the command in parentheses.
        status.rsplit(") ").next().unwrap().chars().next().unwrap()
    };
    let mut pause = agent::PauseContainerRequest::new();
    pause.container_id = id.into();
    client.agent.pause_container(ctx(), &pause).await.unwrap();
    let frozen = std::fs::read_to_string("/sys/fs/cgroup/freezer/veil/pauseme/freezer.state")
        .or_else(|_| std::fs::read_to_string(cgroup_dir(id).join("cgroup.freeze")))
        .unwrap();
    assert!(matches!(frozen.trim(), "FROZEN" | "1"), "{frozen}");
    let mut resume = agent::ResumeContainerRequest::new();
    resume.container_id = id.into();
    client.agent.resume_container(ctx(), &resume).await.unwrap();
    assert_eq!(state(), 'S', "sleeping again after resume");

    remove_container(&client, id).await;
    assert!(!cgroup_dir(id).exists());
    assert!(mounts_under(&agent.state_dir).is_empty());
}
