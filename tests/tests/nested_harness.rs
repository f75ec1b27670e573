//! The nested harness itself: a command runs in L1 and its output comes back, and an L1 that
//! stops making progress is told apart from a slow command (its heartbeat goes silent) and
//! ended long before the command's own limit.

use std::time::{Duration, Instant};

use veil_tests::nested::{available_or_skip, L1Command, NestedError};

#[test]
fn a_command_runs_in_l1_and_an_l1_that_stops_beating_is_ended_early() {
    if !available_or_skip() {
        return;
    }
    let output = L1Command::new("echo hello from L1; exit 3")
        .and_then(|c| c.timeout(Duration::from_secs(600)).run())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status, 3, "{}", output.console);
    assert_eq!(output.stdout, "hello from L1\n");

    // Stopping every process but itself and init stops the heartbeat, as a frozen L1 does;
    // the command would otherwise run for 10 minutes.
    let limit = Duration::from_secs(10);
    let started = Instant::now();
    let result = L1Command::new("kill -STOP -1; sleep 600").and_then(|c| {
        c.timeout(Duration::from_secs(900))
            .heartbeat_limit(limit)
            .run()
    });
    let took = started.elapsed();
    match result {
        // Run twice (a frozen L1 is retried once), each ended soon after its silence began:
        // a silence near the limit shows the heartbeat was beating before the command.
        Err(NestedError::Frozen { silent, .. }) => {
            assert!(
                silent > limit && silent < limit * 4,
                "silent for {silent:?}"
            );
            assert!(took < Duration::from_secs(400), "took {took:?}");
        }
        other => panic!("expected a frozen L1, got {other:?}"),
    }
}
