use std::path::{Path, PathBuf};

use prism_sys::launch::Step;

use super::slots::Slots;
use super::*;
use crate::runtime::{LayerMount, RootfsSpec};

fn spec(mounts: Vec<(&str, Vec<&str>)>) -> RootfsSpec {
    RootfsSpec {
        mounts: mounts
            .into_iter()
            .map(|(t, l)| LayerMount {
                target: PathBuf::from(t),
                lowers: l.into_iter().map(PathBuf::from).collect(),
            })
            .collect(),
    }
}

fn dirs() -> SandboxDirs {
    SandboxDirs::new(Path::new("/var/lib/prism/sandboxes"), "sb1")
}

#[test]
fn plan_idmaps_every_lower_and_overlays_each_layer() {
    let p = plan(
        &dirs(),
        &spec(vec![("/", vec!["/skel"]), ("/usr", vec!["/usr"])]),
        "h",
        &PlanOptions::default(),
    )
    .unwrap();
    assert_eq!(p.trees, vec![PathBuf::from("/skel"), PathBuf::from("/usr")]);
    let overlays: Vec<_> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Mount {
                fstype: Some(f),
                target,
                data,
                ..
            } if f == "overlay" => Some((target.clone(), data.clone().unwrap_or_default())),
            _ => None,
        })
        .collect();
    assert_eq!(overlays.len(), 2);
    assert_eq!(
        overlays[0].0,
        PathBuf::from("/var/lib/prism/sandboxes/sb1/rootfs")
    );
    assert!(overlays[0].1.starts_with("lowerdir=/var/lib/prism/sandboxes/sb1/lower/0-0,upperdir=/var/lib/prism/sandboxes/sb1/upper/0,"));
    assert_eq!(
        overlays[1].0,
        PathBuf::from("/var/lib/prism/sandboxes/sb1/rootfs/usr")
    );
    // Writable layers are volatile unless the sandbox's syncs must reach the disk.
    assert!(
        overlays
            .iter()
            .all(|(_, d)| d.ends_with(",userxattr,volatile")),
        "{overlays:?}"
    );
    // Trees are attached before the overlay that uses them, and the root overlay comes first.
    let attach = p
        .steps
        .iter()
        .position(|s| matches!(s, Step::AttachTree { tree: 1, .. }))
        .unwrap();
    let usr = p
        .steps
        .iter()
        .position(|s| matches!(s, Step::Mount { target, .. } if target.ends_with("rootfs/usr")))
        .unwrap();
    assert!(attach < usr);
    // The mounts, then the pivot into the new root; the cgroup namespace is made last (it
    // waits for the cgroup placement, which overlaps the mounts).
    assert_eq!(p.steps.first(), Some(&Step::MakeRootPrivate));
    let n = p.steps.len();
    assert!(matches!(p.steps[n - 2], Step::PivotRoot { .. }));
    assert_eq!(p.steps.last(), Some(&Step::UnshareCgroup));
}

#[test]
fn plan_exposes_only_the_safe_devices() {
    let p = plan(
        &dirs(),
        &spec(vec![("/", vec!["/skel"])]),
        "h",
        &PlanOptions::default(),
    )
    .unwrap();
    let binds: Vec<String> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Mount {
                source,
                fstype: None,
                ..
            } => Some(source.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        binds,
        [
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/random",
            "/dev/urandom",
            "/dev/tty"
        ]
    );
}

#[test]
fn a_prepared_dev_is_one_device_tree_and_sys_is_opt_in() {
    let opts = PlanOptions {
        dev_skeleton: Some(PathBuf::from("/state/.dev-v1")),
        ..Default::default()
    };
    let p = plan(&dirs(), &spec(vec![("/", vec!["/skel"])]), "h", &opts).unwrap();
    assert_eq!(
        p.trees,
        vec![PathBuf::from("/skel"), PathBuf::from("/state/.dev-v1")]
    );
    assert_eq!(p.device_tree, Some(1), "only the /dev tree keeps devices");
    assert!(p.steps.iter().any(|s| matches!(
        s,
        Step::AttachTree { tree: 1, target } if target.ends_with("rootfs/dev")
    )));
    let mounts: Vec<(String, PathBuf)> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Mount { source, target, .. } => Some((source.clone(), target.clone())),
            _ => None,
        })
        .collect();
    // No tmpfs /dev, no device binds, no sysfs: overlay, proc, devpts, shm, tmp.
    let sources: Vec<&str> = mounts.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        sources,
        ["overlay", "proc", "devpts", "shm", "tmpfs"],
        "{mounts:?}"
    );
    assert!(mounts[2].1.ends_with("rootfs/dev/pts"));
    assert!(mounts[3].1.ends_with("rootfs/dev/shm"));
    // Asked for, /sys is read-only sysfs; the tmpfs /dev fallback has no device tree.
    let with_sys = PlanOptions {
        sysfs: true,
        ..Default::default()
    };
    let p = plan(&dirs(), &spec(vec![("/", vec!["/skel"])]), "h", &with_sys).unwrap();
    assert_eq!(p.device_tree, None);
    assert!(p.steps.iter().any(|s| matches!(
        s,
        Step::Mount { fstype: Some(f), flags, target, .. }
            if f == "sysfs" && flags & prism_sys::launch::flags::RDONLY != 0 && target.ends_with("rootfs/sys")
    )));
}

#[test]
fn fsync_mounts_the_writable_layers_without_volatile_and_changes_nothing_else() {
    let spec = spec(vec![("/", vec!["/skel"]), ("/usr", vec!["/usr"])]);
    let volatile = plan(&dirs(), &spec, "h", &PlanOptions::default()).unwrap();
    let fsync = PlanOptions {
        fsync: true,
        ..Default::default()
    };
    let durable = plan(&dirs(), &spec, "h", &fsync).unwrap();
    assert_eq!(volatile.steps.len(), durable.steps.len());
    let mut changed = 0;
    for (v, d) in volatile.steps.iter().zip(&durable.steps) {
        match (v, d) {
            (Step::Mount { data: Some(dv), .. }, Step::Mount { data: Some(dd), .. })
                if dv != dd =>
            {
                assert_eq!(dv.strip_suffix(",volatile"), Some(dd.as_str()));
                assert!(dd.ends_with(",userxattr"), "{dd}");
                changed += 1;
            }
            _ => assert_eq!(v, d),
        }
    }
    assert_eq!(changed, 2, "both overlays");
}

#[test]
fn loopback_is_brought_up_only_in_a_namespace_of_its_own() {
    let spec = spec(vec![("/", vec!["/skel"])]);
    let own = plan(&dirs(), &spec, "h", &PlanOptions::default()).unwrap();
    let premade = PlanOptions {
        premade_netns: true,
        ..Default::default()
    };
    let pooled = plan(&dirs(), &spec, "h", &premade).unwrap();
    let count = |p: &MountPlan| p.steps.iter().filter(|s| **s == Step::LoopbackUp).count();
    assert_eq!(count(&own), 1);
    assert_eq!(count(&pooled), 0);
    // Nothing else differs.
    let mut rest = own.steps.clone();
    rest.retain(|s| *s != Step::LoopbackUp);
    assert_eq!(rest, pooled.steps);
}

#[test]
fn plan_rejects_bad_specs() {
    assert!(plan(&dirs(), &spec(vec![]), "h", &PlanOptions::default()).is_err());
    assert!(
        plan(
            &dirs(),
            &spec(vec![("/usr", vec!["/usr"])]),
            "h",
            &PlanOptions::default()
        )
        .is_err()
    );
    assert!(
        plan(
            &dirs(),
            &spec(vec![("/", vec![])]),
            "h",
            &PlanOptions::default()
        )
        .is_err()
    );
    assert!(
        plan(
            &dirs(),
            &spec(vec![("/", vec!["/a,upperdir=/x"])]),
            "h",
            &PlanOptions::default()
        )
        .is_err()
    );
    assert!(
        plan(
            &dirs(),
            &spec(vec![("/", vec!["relative"])]),
            "h",
            &PlanOptions::default()
        )
        .is_err()
    );
    assert!(
        plan(
            &dirs(),
            &spec(vec![("/", vec!["/a"]), ("/../etc", vec!["/b"])]),
            "h",
            &PlanOptions::default(),
        )
        .is_err()
    );
}

#[test]
fn ids_are_checked() {
    assert!(validate_id("sb-0123abc").is_ok());
    for bad in ["", "-x", "A", "a/b", "..", "a b", &"x".repeat(65)] {
        assert!(validate_id(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn slots_hand_out_distinct_ranges_and_reuse_released_ones() {
    let s = Slots::default();
    let a = s.allocate().unwrap().unwrap();
    let b = s.allocate().unwrap().unwrap();
    assert_ne!(a, b);
    assert_eq!(b - a, IDS_PER_SANDBOX);
    assert!(a >= 1 << 20);
    s.release(a);
    assert_eq!(s.allocate().unwrap(), Some(a));
    s.take(b + IDS_PER_SANDBOX).expect("no host-wide claims");
    assert_eq!(s.allocate().unwrap(), Some(b + 2 * IDS_PER_SANDBOX));
}
