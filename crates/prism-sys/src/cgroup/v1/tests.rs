//! Unit tests of the v1 manager on a fake cgroupfs.

use super::*;
use crate::cgroup::CgroupIo;
use crate::cgroup::testing::FakeTree;

const UNLIMITED: &str = "9223372036854771712\n";

fn hybrid(unified: bool) -> (FakeTree, V1Manager) {
    let t = FakeTree::new();
    let cg = "/sys/fs/cgroup";
    for h in ["cpu", "cpuacct", "memory", "pids", "freezer"] {
        t.file(&format!("{cg}/{h}/cgroup.procs"), "");
    }
    t.file(&format!("{cg}/cpu/cpu.cfs_period_us"), "100000\n");
    t.file(&format!("{cg}/cpu/cpu.cfs_quota_us"), "-1\n");
    t.file(&format!("{cg}/cpuacct/cpuacct.usage"), "0\n");
    t.file(&format!("{cg}/memory/memory.limit_in_bytes"), UNLIMITED);
    t.file(
        &format!("{cg}/memory/memory.memsw.limit_in_bytes"),
        UNLIMITED,
    );
    t.file(&format!("{cg}/memory/memory.usage_in_bytes"), "0\n");
    t.file(
        &format!("{cg}/memory/memory.oom_control"),
        "oom_kill_disable 0\noom_kill 0\n",
    );
    t.file(&format!("{cg}/pids/pids.max"), "max\n");
    t.file(&format!("{cg}/pids/pids.current"), "0\n");
    t.file(&format!("{cg}/freezer/freezer.state"), "THAWED\n");
    let unified = unified.then(|| {
        for f in [
            "cgroup.procs",
            "cgroup.kill",
            "cgroup.freeze",
            "cgroup.events",
        ] {
            t.file(&format!("{cg}/unified/{f}"), "");
        }
        PathBuf::from(format!("{cg}/unified"))
    });
    let hierarchies = hierarchies_under(cg);
    let m = V1Manager::new(t.shared(), hierarchies, unified, "prism-test")
        .map(|m| m.with_timeout(Duration::from_millis(300)));
    match m {
        Ok(m) => (t, m),
        Err(e) => panic!("{e}"),
    }
}

const A: &str = "/sys/fs/cgroup/{}/prism-test/a";

fn at(hierarchy: &str, file: &str) -> String {
    format!("{}/{file}", A.replace("{}", hierarchy))
}

fn limits() -> CgroupLimits {
    CgroupLimits {
        cpu_quota: Some(0.2),
        memory_bytes: Some(64 << 20),
        pids: Some(10),
    }
}

/// The five v1 hierarchies mounted under `root`.
fn hierarchies_under(root: &str) -> V1Hierarchies {
    let h = |name: &str| PathBuf::from(format!("{root}/{name}"));
    V1Hierarchies {
        cpu: h("cpu"),
        cpuacct: h("cpuacct"),
        memory: h("memory"),
        pids: h("pids"),
        freezer: h("freezer"),
    }
}

#[test]
fn create_writes_limits_in_every_hierarchy() -> Result<(), CgroupError> {
    let (t, m) = hybrid(true);
    m.create("a", &limits())?;
    assert_eq!(t.read(&at("cpu", "cpu.cfs_period_us")), "10000");
    assert_eq!(t.read(&at("cpu", "cpu.cfs_quota_us")), "2000");
    assert_eq!(t.read(&at("memory", "memory.limit_in_bytes")), "67108864");
    assert_eq!(
        t.read(&at("memory", "memory.memsw.limit_in_bytes")),
        "67108864"
    );
    assert_eq!(t.read(&at("pids", "pids.max")), "10");
    for h in ["cpuacct", "freezer", "unified"] {
        assert!(t.exists(&at(h, "cgroup.procs")), "{h}");
    }
    assert_eq!(m.list()?, vec!["a".to_owned()]);
    Ok(())
}

#[test]
fn create_again_converges_and_orders_memsw() -> Result<(), CgroupError> {
    let (t, m) = hybrid(false);
    m.create("a", &limits())?;
    // Growing: memsw must move first or the kernel (and the fake) says EINVAL.
    let bigger = CgroupLimits {
        memory_bytes: Some(128 << 20),
        ..limits()
    };
    m.create("a", &bigger)?;
    assert_eq!(t.read(&at("memory", "memory.limit_in_bytes")), "134217728");
    m.create("a", &CgroupLimits::default())?;
    assert_eq!(t.read(&at("cpu", "cpu.cfs_quota_us")), "-1");
    assert_eq!(t.read(&at("cpu", "cpu.cfs_period_us")), "100000");
    assert_eq!(t.read(&at("memory", "memory.limit_in_bytes")), UNLIMITED);
    assert_eq!(
        t.read(&at("memory", "memory.memsw.limit_in_bytes")),
        UNLIMITED
    );
    assert_eq!(t.read(&at("pids", "pids.max")), "max");
    // Shrinking again: memory first.
    m.create("a", &limits())?;
    assert_eq!(
        t.read(&at("memory", "memory.memsw.limit_in_bytes")),
        "67108864"
    );
    Ok(())
}

#[test]
fn a_fresh_cgroup_gets_only_the_limits_that_are_set() -> Result<(), CgroupError> {
    let (t, m) = hybrid(true);
    m.create("a", &CgroupLimits::default())?;
    assert_eq!(
        t.writes(),
        Vec::<(String, String)>::new(),
        "defaults need no write"
    );
    let pids_only = CgroupLimits {
        pids: Some(10),
        ..Default::default()
    };
    m.create("b", &pids_only)?;
    let written: Vec<String> = t.writes().into_iter().map(|(p, _)| p).collect();
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(
        written[0].ends_with("pids/prism-test/b/pids.max"),
        "{written:?}"
    );
    // An existing cgroup converges: every limit is written again.
    m.create("b", &CgroupLimits::default())?;
    assert_eq!(t.read(&at("pids", "pids.max").replace("/a/", "/b/")), "max");
    Ok(())
}

#[test]
fn failed_create_leaves_nothing() {
    let (t, m) = hybrid(true);
    t.fail_writes(&at("pids", "pids.max"), nix::libc::EACCES);
    let err = m.create("a", &limits());
    let Err(CgroupError::Write { path, source, .. }) = err else {
        panic!("expected a write error, got {err:?}");
    };
    assert!(path.ends_with("pids/prism-test/a/pids.max"));
    assert_eq!(source.raw_os_error(), Some(nix::libc::EACCES));
    assert!(!t.exists(&A.replace("{}", "memory")));
    assert!(!t.exists(&A.replace("{}", "unified")));
}

#[test]
fn add_process_joins_every_hierarchy() -> Result<(), CgroupError> {
    let (t, m) = hybrid(true);
    assert!(matches!(
        m.add_process("a", 7),
        Err(CgroupError::NotFound(_))
    ));
    m.create("a", &CgroupLimits::default())?;
    assert!(matches!(
        m.add_process("a", 0),
        Err(CgroupError::InvalidPid(0))
    ));
    m.add_process("a", 7)?;
    for h in ["cpu", "cpuacct", "memory", "pids", "freezer", "unified"] {
        assert_eq!(t.read(&at(h, "cgroup.procs")), "7\n", "{h}");
    }
    assert_eq!(m.pids("a")?, vec![7]);
    assert!(matches!(m.pids("../a"), Err(CgroupError::InvalidId(_))));
    Ok(())
}

#[test]
fn kill_all_uses_cgroup_kill_then_thaws() -> Result<(), CgroupError> {
    let (t, m) = hybrid(true);
    m.create("a", &CgroupLimits::default())?;
    m.add_process("a", 7)?;
    m.add_process("a", 8)?;
    m.kill_all("a")?;
    assert!(m.pids("a")?.is_empty());
    let writes = t.writes();
    let kill = writes.iter().position(|(p, _)| p.ends_with("cgroup.kill"));
    let thaw = writes.iter().position(|(_, v)| v == "THAWED");
    assert!(kill.is_some() && kill < thaw, "{writes:?}");
    assert!(
        !writes.iter().any(|(_, v)| v == "FROZEN"),
        "no freezer round needed"
    );
    Ok(())
}

#[test]
fn kill_all_without_unified_freezes_kills_thaws() -> Result<(), CgroupError> {
    let (t, m) = hybrid(false);
    m.create("a", &CgroupLimits::default())?;
    m.add_process("a", 7)?;
    m.kill_all("a")?;
    assert_eq!(t.killed(), vec![7]);
    let states: Vec<String> = t
        .writes()
        .into_iter()
        .filter(|(p, _)| p.ends_with("freezer.state"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(states, vec!["FROZEN", "THAWED"]);
    Ok(())
}

#[test]
fn kill_all_escalates_then_times_out_on_a_stuck_task() -> Result<(), CgroupError> {
    let (t, m) = hybrid(true);
    m.create("a", &CgroupLimits::default())?;
    m.add_process("a", 9)?;
    t.immortal(9);
    let err = m.kill_all("a");
    assert!(
        matches!(err, Err(CgroupError::Timeout { state: "empty", .. })),
        "{err:?}"
    );
    assert!(
        t.killed().len() >= 2,
        "cgroup.kill, then signals: {:?}",
        t.killed()
    );
    assert!(t.writes().iter().any(|(_, v)| v == "FROZEN"));
    Ok(())
}

#[test]
fn stats_read_every_controller() -> Result<(), CgroupError> {
    let (t, m) = hybrid(false);
    m.create("a", &limits())?;
    t.file(&at("cpuacct", "cpuacct.usage"), "1234\n");
    t.file(&at("memory", "memory.usage_in_bytes"), "4096\n");
    t.file(
        &at("memory", "memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    );
    t.file(&at("pids", "pids.current"), "2\n");
    assert_eq!(
        m.oom_kills("a")?,
        3,
        "the counter alone, from the same file"
    );
    let stats = m.stats("a")?;
    assert_eq!(
        stats,
        CgroupStats {
            cpu_usage_ns: 1234,
            memory_bytes: 4096,
            memory_limit_bytes: Some(64 << 20),
            pids: 2,
            oom_kills: 3
        }
    );
    t.file(&at("memory", "memory.limit_in_bytes"), UNLIMITED);
    assert_eq!(m.stats("a")?.memory_limit_bytes, None);
    t.file(&at("pids", "pids.current"), "garbage\n");
    assert!(matches!(m.stats("a"), Err(CgroupError::Parse { .. })));
    Ok(())
}

#[test]
fn freeze_and_thaw_use_the_freezer() -> Result<(), CgroupError> {
    let (t, m) = hybrid(true);
    m.create("a", &CgroupLimits::default())?;
    m.freeze("a")?;
    assert_eq!(t.read(&at("freezer", "freezer.state")), "FROZEN");
    m.thaw("a")?;
    assert_eq!(t.read(&at("freezer", "freezer.state")), "THAWED");
    Ok(())
}

#[test]
fn destroy_removes_every_directory_and_is_idempotent() -> Result<(), CgroupError> {
    let (t, m) = hybrid(true);
    m.create("a", &limits())?;
    m.create("b", &limits())?;
    m.add_process("a", 7)?;
    m.destroy("a")?;
    m.destroy("a")?;
    for h in ["cpu", "cpuacct", "memory", "pids", "freezer", "unified"] {
        assert!(!t.exists(&A.replace("{}", h)), "{h}");
    }
    assert_eq!(m.list()?, vec!["b".to_owned()]);
    Ok(())
}

#[test]
fn remove_parent_destroys_children_then_the_parent_everywhere() -> Result<(), CgroupError> {
    let (t, m) = hybrid(true);
    m.remove_parent()?;
    m.create("a", &limits())?;
    m.add_process("a", 7)?;
    m.create("b", &limits())?;
    m.remove_parent()?;
    for h in ["cpu", "cpuacct", "memory", "pids", "freezer", "unified"] {
        assert!(!t.exists(&format!("/sys/fs/cgroup/{h}/prism-test")), "{h}");
    }
    assert!(m.list()?.is_empty());
    Ok(())
}

#[test]
fn list_finds_leftovers_in_any_hierarchy() -> Result<(), CgroupError> {
    let (t, m) = hybrid(true);
    assert!(m.list()?.is_empty(), "missing parent lists nothing");
    t.file("/sys/fs/cgroup/pids/prism-test/orphan/cgroup.procs", "");
    assert_eq!(m.list()?, vec!["orphan".to_owned()]);
    m.destroy("orphan")?;
    assert!(m.list()?.is_empty());
    Ok(())
}

/// A hybrid host whose cgroup2 hierarchy freezes, kills and counts CPU time (the core files
/// `cgroup.freeze`, `cgroup.kill` and `cpu.stat`).
fn hybrid_core() -> (FakeTree, V1Manager) {
    let (t, m) = hybrid(true);
    t.file(
        "/sys/fs/cgroup/unified/cpu.stat",
        "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
    );
    (t, m)
}

#[test]
fn with_a_core_cgroup2_a_sandbox_skips_cpuacct_and_freezer() -> Result<(), CgroupError> {
    let (t, m) = hybrid_core();
    m.create("a", &limits())?;
    for h in ["cpu", "memory", "pids", "unified"] {
        assert!(t.exists(&at(h, "cgroup.procs")), "{h}");
    }
    for h in ["cpuacct", "freezer"] {
        assert!(!t.exists(&A.replace("{}", h)), "{h}");
    }
    assert_eq!(t.read(&at("pids", "pids.max")), "10");
    m.add_process("a", 7)?;
    for h in ["cpu", "memory", "pids", "unified"] {
        assert_eq!(t.read(&at(h, "cgroup.procs")), "7\n", "{h}");
    }
    assert_eq!(m.pids("a")?, vec![7]);
    assert_eq!(m.list()?, vec!["a".to_owned()]);
    Ok(())
}

#[test]
fn without_cpu_stat_the_v1_cpuacct_and_freezer_stay() -> Result<(), CgroupError> {
    // hybrid(true) has cgroup.kill and cgroup.freeze but no cpu.stat (an older kernel).
    let (t, m) = hybrid(true);
    m.create("a", &CgroupLimits::default())?;
    for h in ["cpuacct", "freezer", "unified"] {
        assert!(t.exists(&at(h, "cgroup.procs")), "{h}");
    }
    Ok(())
}

#[test]
fn with_a_core_cgroup2_freeze_stats_and_kill_go_through_it() -> Result<(), CgroupError> {
    let (t, m) = hybrid_core();
    m.create("a", &limits())?;
    m.add_process("a", 7)?;
    m.freeze("a")?;
    assert_eq!(t.read(&at("unified", "cgroup.freeze")), "1");
    m.thaw("a")?;
    assert_eq!(t.read(&at("unified", "cgroup.freeze")), "0");
    t.file(
        &at("unified", "cpu.stat"),
        "usage_usec 1234\nuser_usec 1000\n",
    );
    t.file(&at("memory", "memory.usage_in_bytes"), "4096\n");
    let stats = m.stats("a")?;
    assert_eq!(stats.cpu_usage_ns, 1_234_000);
    assert_eq!(stats.memory_bytes, 4096);
    m.kill_all("a")?;
    assert!(m.pids("a")?.is_empty());
    assert!(
        !t.writes().iter().any(|(p, _)| p.contains("freezer")),
        "{:?}",
        t.writes()
    );
    Ok(())
}

#[test]
fn with_a_core_cgroup2_a_stuck_task_is_frozen_there_and_signalled() -> Result<(), CgroupError> {
    let (t, m) = hybrid_core();
    m.create("a", &CgroupLimits::default())?;
    m.add_process("a", 9)?;
    t.immortal(9);
    let err = m.kill_all("a");
    assert!(
        matches!(err, Err(CgroupError::Timeout { state: "empty", .. })),
        "{err:?}"
    );
    let freezes: Vec<String> = t
        .writes()
        .into_iter()
        .filter(|(p, _)| p.ends_with("unified/prism-test/a/cgroup.freeze"))
        .map(|(_, v)| v)
        .collect();
    assert!(freezes.len() >= 2 && freezes[0] == "1", "{freezes:?}");
    assert_eq!(
        freezes.last().map(String::as_str),
        Some("0"),
        "thawed at the end"
    );
    assert!(t.killed().len() >= 2, "{:?}", t.killed());
    Ok(())
}

#[test]
fn with_a_core_cgroup2_old_cpuacct_and_freezer_dirs_are_still_removed() -> Result<(), CgroupError> {
    let (t, m) = hybrid_core();
    // A sandbox made before: it has directories in all six.
    for h in ["cpuacct", "freezer"] {
        t.file(&at(h, "cgroup.procs"), "");
    }
    t.file(&at("freezer", "freezer.state"), "THAWED\n");
    m.create("a", &CgroupLimits::default())?;
    m.add_process("a", 7)?;
    t.file(&at("freezer", "cgroup.procs"), "7\n");
    m.destroy("a")?;
    for h in ["cpu", "cpuacct", "memory", "pids", "freezer", "unified"] {
        assert!(!t.exists(&A.replace("{}", h)), "{h}");
    }
    Ok(())
}

/// Polls `done` for up to five seconds.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    done()
}

fn spare_dirs(t: &FakeTree, hierarchy: &str) -> Vec<String> {
    let dir = t
        .io()
        .real(Path::new(&format!("/sys/fs/cgroup/{hierarchy}/prism-test")));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(spares::PREFIX))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn creates_take_spares_made_ahead_and_the_pool_refills() -> Result<(), CgroupError> {
    let (t, m) = hybrid(true);
    m.keep_spares(2)?;
    assert!(eventually(|| m.spares_ready() == 2), "pool never filled");
    let before = spare_dirs(&t, "memory");
    assert_eq!(before.len(), 2, "{before:?}");
    m.create("a", &limits())?;
    // One spare set became "a" in every v1 hierarchy, with the limits written into it.
    let after = spare_dirs(&t, "memory");
    assert_eq!(
        before.iter().filter(|n| !after.contains(n)).count(),
        1,
        "{before:?} -> {after:?}"
    );
    assert_eq!(t.read(&at("pids", "pids.max")), "10");
    assert_eq!(t.read(&at("memory", "memory.limit_in_bytes")), "67108864");
    for h in ["cpu", "cpuacct", "freezer", "unified"] {
        assert!(t.exists(&at(h, "cgroup.procs")), "{h}");
    }
    // Spares are not sandboxes, and the pool makes a new one once the start joined.
    assert_eq!(m.list()?, vec!["a".to_owned()]);
    m.add_process("a", 4242)?;
    assert!(eventually(|| m.spares_ready() == 2), "pool never refilled");
    // Each create takes a different set: "b" is not "a" renamed twice.
    m.create("b", &CgroupLimits::default())?;
    assert!(t.exists(&at("cpu", "cgroup.procs")));
    assert_eq!(m.list()?, vec!["a".to_owned(), "b".to_owned()]);
    m.remove_parent()?;
    assert!(spare_dirs(&t, "memory").is_empty());
    assert!(!t.exists("/sys/fs/cgroup/memory/prism-test"));
    Ok(())
}

#[test]
fn an_existing_cgroup_keeps_its_directories() -> Result<(), CgroupError> {
    let (t, m) = hybrid(false);
    m.create("a", &limits())?;
    m.keep_spares(1)?;
    assert!(eventually(|| m.spares_ready() == 1));
    // Converging an existing cgroup leaves the spare alone.
    m.create("a", &CgroupLimits::default())?;
    assert_eq!(m.spares_ready(), 1);
    assert_eq!(t.read(&at("pids", "pids.max")), "max");
    Ok(())
}

#[test]
fn a_failed_rename_falls_back_to_mkdir_and_leaves_no_spare_behind() -> Result<(), CgroupError> {
    let (t, m) = hybrid(false);
    m.keep_spares(1)?;
    assert!(eventually(|| m.spares_ready() == 1));
    // Something else took the pids half of the spare set away.
    let spare = spare_dirs(&t, "pids");
    assert_eq!(spare.len(), 1);
    t.io()
        .remove_dir(Path::new(&format!(
            "/sys/fs/cgroup/pids/prism-test/{}",
            spare[0]
        )))
        .map_err(|source| CgroupError::RemoveDir {
            path: PathBuf::from("pids spare"),
            source,
        })?;
    m.create("a", &limits())?;
    assert_eq!(t.read(&at("pids", "pids.max")), "10");
    assert!(t.exists(&at("memory", "cgroup.procs")));
    // The broken set is gone from every hierarchy, not renamed halfway; a destroy (here of a
    // start that never joined) refills the pool.
    assert!(spare_dirs(&t, "pids").is_empty());
    m.destroy("a")?;
    assert!(eventually(|| m.spares_ready() == 1), "pool never refilled");
    drop(m.keep_spares(0));
    for h in ["cpu", "memory", "pids"] {
        assert!(spare_dirs(&t, h).is_empty(), "{h}: {:?}", spare_dirs(&t, h));
    }
    Ok(())
}

#[test]
fn spares_of_dead_processes_are_removed_and_dropping_the_pool_removes_its_own()
-> Result<(), CgroupError> {
    let (t, m) = hybrid(false);
    m.keep_spares(1)?;
    assert!(eventually(|| m.spares_ready() == 1));
    // A set left by a daemon that is gone (pid 0 never names a process in /proc).
    for h in ["cpu", "memory", "pids"] {
        t.io()
            .create_dir(Path::new(&format!(
                "/sys/fs/cgroup/{h}/prism-test/{}0-1",
                spares::PREFIX
            )))
            .map_err(|source| CgroupError::CreateDir {
                path: PathBuf::from(h),
                source,
            })?;
    }
    m.keep_spares(2)?;
    assert!(eventually(|| m.spares_ready() == 2));
    let names = spare_dirs(&t, "memory");
    assert_eq!(names.len(), 2, "{names:?}");
    let own = format!("{}{}-", spares::PREFIX, std::process::id());
    assert!(names.iter().all(|n| n.starts_with(&own)), "{names:?}");
    drop(m);
    for h in ["cpu", "memory", "pids"] {
        assert!(spare_dirs(&t, h).is_empty(), "{h}");
    }
    Ok(())
}

#[test]
fn two_managers_on_one_parent_keep_spares_of_their_own() -> Result<(), CgroupError> {
    let (t, m) = hybrid(false);
    let other = V1Manager::new(
        t.shared(),
        hierarchies_under("/sys/fs/cgroup"),
        None,
        "prism-test",
    )?;
    m.keep_spares(1)?;
    other.keep_spares(1)?;
    assert!(eventually(
        || m.spares_ready() == 1 && other.spares_ready() == 1
    ));
    assert_eq!(spare_dirs(&t, "memory").len(), 2);
    // Each takes its own set.
    m.create("a", &CgroupLimits::default())?;
    other.create("b", &CgroupLimits::default())?;
    assert!(spare_dirs(&t, "memory").is_empty());
    assert_eq!(m.list()?, vec!["a".to_owned(), "b".to_owned()]);
    Ok(())
}
