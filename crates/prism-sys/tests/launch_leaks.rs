//! Alone in its binary (it counts the process's mappings and fds): 200 launches leave neither
//! behind, e.g. no child stack left mapped and no pidfd or socket left open.

mod common;

use common::{require_root, run_true};

fn count(path: &str) -> usize {
    match path {
        "maps" => std::fs::read_to_string("/proc/self/maps")
            .expect("maps")
            .lines()
            .count(),
        _ => std::fs::read_dir("/proc/self/fd").expect("fds").count(),
    }
}

#[test]
fn two_hundred_launches_leave_no_mappings_and_no_fds() {
    require_root!();
    for _ in 0..3 {
        run_true();
    }
    let (maps, fds) = (count("maps"), count("fds"));
    for _ in 0..200 {
        run_true();
    }
    let (maps_after, fds_after) = (count("maps"), count("fds"));
    assert_eq!(fds_after, fds, "fds before and after");
    // A leaked stack is two mappings (the stack and its guard page) per launch.
    assert!(
        maps_after <= maps,
        "mappings: {maps} before, {maps_after} after"
    );
}
