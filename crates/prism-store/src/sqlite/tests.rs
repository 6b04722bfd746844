#![allow(clippy::unwrap_used)]

use super::*;

fn rec(id: &str, name: Option<&str>) -> SandboxRecord {
    SandboxRecord::new_for_test(id, name)
}

fn temp_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
    (dir, store)
}

#[test]
fn insert_get_find_by_name() {
    let (_d, s) = temp_store();
    let mut r = rec("a1", Some("web"));
    r.labels.insert("team".into(), "x".into());
    r.handle = Some(serde_json::json!({"pid": 42}));
    s.insert(&r).unwrap();
    assert_eq!(s.get("a1").unwrap().unwrap(), r);
    assert_eq!(s.find("web").unwrap().unwrap().id, "a1");
    assert_eq!(s.find("a1").unwrap().unwrap().id, "a1");
    assert!(s.find("nope").unwrap().is_none());
    assert!(s.get("web").unwrap().is_none(), "get is by id only");
}

#[test]
fn names_are_unique_among_live_sandboxes_only() {
    let (_d, s) = temp_store();
    s.insert(&rec("a1", Some("web"))).unwrap();
    let err = s.insert(&rec("a2", Some("web"))).unwrap_err();
    assert!(
        matches!(err, StoreError::NameConflict(ref n) if n == "web"),
        "{err:?}"
    );
    let err = s.insert(&rec("a1", Some("other"))).unwrap_err();
    assert!(matches!(err, StoreError::DuplicateId(_)), "{err:?}");
    // Once destroyed, the name is free again, and a lookup by name finds the live one.
    let mut r = s.get("a1").unwrap().unwrap();
    r.state = SandboxState::Destroyed;
    s.update(&r, "destroyed").unwrap();
    s.insert(&rec("a2", Some("web"))).unwrap();
    assert_eq!(s.find("web").unwrap().unwrap().id, "a2");
    // Unnamed sandboxes never clash.
    s.insert(&rec("a3", None)).unwrap();
    s.insert(&rec("a4", None)).unwrap();
}

#[test]
fn update_records_transitions_as_events() {
    let (_d, s) = temp_store();
    let mut r = rec("a1", None);
    s.insert(&r).unwrap();
    r.state = SandboxState::Running;
    r.updated_at_ms = 5;
    s.update(&r, "started").unwrap();
    r.expires_at_ms = Some(99);
    s.update(&r, "no transition").unwrap();
    r.state = SandboxState::Stopped;
    s.update(&r, "stopped by user").unwrap();
    let ev = s.events("a1").unwrap();
    let kinds: Vec<_> = ev.iter().map(|e| (e.kind.as_str(), e.to_state)).collect();
    assert_eq!(
        kinds,
        vec![
            ("created", Some(SandboxState::Creating)),
            ("transition", Some(SandboxState::Running)),
            ("transition", Some(SandboxState::Stopped)),
        ]
    );
    assert_eq!(ev[2].from_state, Some(SandboxState::Running));
    assert_eq!(ev[2].message, "stopped by user");
    assert!(matches!(
        s.update(&rec("zz", None), "x"),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn list_filters_and_pages() {
    let (_d, s) = temp_store();
    for i in 0..5 {
        let mut r = rec(&format!("id{i}"), None);
        if i % 2 == 0 {
            r.labels.insert("env".into(), "prod".into());
        }
        if i == 4 {
            r.state = SandboxState::Destroyed;
        }
        s.insert(&r).unwrap();
    }
    let all = s.list(&ListFilter::default()).unwrap();
    assert_eq!(all.len(), 4, "destroyed hidden by default");
    let destroyed = s
        .list(&ListFilter {
            state: Some(SandboxState::Destroyed),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(destroyed.len(), 1);
    let prod = s
        .list(&ListFilter {
            label: Some(("env".into(), "prod".into())),
            ..Default::default()
        })
        .unwrap();
    let ids: Vec<_> = prod.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["id0", "id2"]);
    let page1 = s
        .list(&ListFilter {
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page1.len(), 2);
    let page2 = s
        .list(&ListFilter {
            limit: 2,
            after_id: Some(page1[1].id.clone()),
            ..Default::default()
        })
        .unwrap();
    let ids: Vec<_> = page2.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["id2", "id3"]);
    let counts = s.counts().unwrap();
    assert_eq!(counts.get(&SandboxState::Creating), Some(&4));
    assert_eq!(counts.get(&SandboxState::Destroyed), Some(&1));
}

#[test]
fn records_survive_reopen_and_schema_is_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.insert(&rec("a1", Some("keep"))).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.find("keep").unwrap().unwrap().id, "a1");
    assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
    let mode: String = lock(&s.conn)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn purge_removes_old_destroyed_records_only() {
    let (_d, s) = temp_store();
    let mut r = rec("old", None);
    r.state = SandboxState::Destroyed;
    r.updated_at_ms = 10;
    s.insert(&r).unwrap();
    let mut r = rec("new", None);
    r.state = SandboxState::Destroyed;
    r.updated_at_ms = 1000;
    s.insert(&r).unwrap();
    s.insert(&rec("live", None)).unwrap();
    assert_eq!(s.purge_destroyed(500).unwrap(), 1);
    assert!(s.get("old").unwrap().is_none());
    assert!(s.events("old").unwrap().is_empty());
    assert!(s.get("new").unwrap().is_some());
    assert!(s.get("live").unwrap().is_some());
}

#[test]
fn corrupt_rows_are_errors_not_panics() {
    let (_d, s) = temp_store();
    s.insert(&rec("a1", None)).unwrap();
    lock(&s.conn)
        .execute("UPDATE sandboxes SET spec = 'not json' WHERE id = 'a1'", [])
        .unwrap();
    s.cache.clear();
    assert!(matches!(s.get("a1"), Err(StoreError::Corrupt { .. })));
}

#[test]
fn durability_sets_the_synchronous_pragma_and_records_survive_either_way() {
    let dir = tempfile::tempdir().unwrap();
    for (durability, expect) in [(Durability::Os, 1), (Durability::Disk, 2)] {
        let path = dir.path().join(format!("{durability:?}.db"));
        {
            let s = SqliteStore::open_with(&path, durability).unwrap();
            let sync: i64 = lock(&s.conn)
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!(sync, expect, "{durability:?}");
            s.insert(&rec("d1", None)).unwrap();
        }
        let s = SqliteStore::open_with(&path, durability).unwrap();
        assert!(s.get("d1").unwrap().is_some());
    }
}

/// The store's memory never disagrees with its database: every answer from the cache equals
/// what a fresh store over the same file (a restarted daemon) reads.
#[test]
fn the_cache_is_written_through_and_matches_a_reopened_store() {
    let (d, s) = temp_store();
    let path = d.path().join("state.db");
    let mut r = rec("a1", Some("web"));
    s.insert(&r).unwrap();
    assert_eq!(s.find_cached("web").unwrap(), r);
    assert_eq!(
        s.owner_cached("a1"),
        Some(None),
        "insert reads the owner row"
    );
    r.state = SandboxState::Running;
    r.name = Some("api".into());
    r.updated_at_ms = 5;
    // An update never changes the creation time, in the database or in memory.
    s.update(
        &SandboxRecord {
            created_at_ms: 99,
            ..r.clone()
        },
        "started",
    )
    .unwrap();
    assert!(s.find_cached("web").is_none());
    assert!(s.find("web").unwrap().is_none());
    assert_eq!(s.find_cached("api").unwrap(), r);
    let fresh = SqliteStore::open(&path).unwrap();
    assert_eq!(fresh.get("a1").unwrap().unwrap(), r);
    assert_eq!(fresh.find("api").unwrap().unwrap(), r);
    // A failed write leaves memory as it was.
    let mut clash = rec("b1", Some("api"));
    assert!(s.insert(&clash).is_err());
    assert!(s.find_cached("b1").is_none());
    // Destroyed records leave memory; their lookups read the database.
    r.state = SandboxState::Destroyed;
    s.update(&r, "destroyed").unwrap();
    assert!(s.find_cached("a1").is_none() && s.find_cached("api").is_none());
    assert_eq!(s.get("a1").unwrap().unwrap().state, SandboxState::Destroyed);
    assert!(s.find("api").unwrap().is_none());
    assert!(
        s.find_cached("a1").is_none(),
        "destroyed rows are not cached by reads"
    );
    clash.state = SandboxState::Running;
    s.insert(&clash).unwrap();
    assert_eq!(s.find_cached("api").unwrap().id, "b1");
    let fresh = SqliteStore::open(&path).unwrap();
    assert_eq!(fresh.find("api").unwrap().unwrap().id, "b1");
}

#[test]
fn owners_and_secrets_in_memory_follow_their_writes() {
    use crate::auth::SealedSecret;
    let (d, s) = temp_store();
    s.insert(&rec("a1", None)).unwrap();
    s.set_owner("a1", "p").unwrap();
    assert_eq!(s.owner_cached("a1"), Some(Some("p".into())));
    // A record read from the database learns its owner at the first owner() call.
    let fresh = SqliteStore::open(&d.path().join("state.db")).unwrap();
    assert!(fresh.get("a1").unwrap().is_some());
    assert_eq!(fresh.owner_cached("a1"), None);
    assert_eq!(fresh.owner("a1").unwrap().as_deref(), Some("p"));
    assert_eq!(fresh.owner_cached("a1"), Some(Some("p".into())));
    let secret = |name: &str, v: u8| SealedSecret {
        project: "p".into(),
        name: name.into(),
        nonce: vec![v; 12],
        ciphertext: vec![v; 20],
        updated_at_ms: 1,
    };
    assert!(s.secrets_cached("p").is_none());
    assert!(s.secrets("p").unwrap().is_empty());
    assert_eq!(s.secrets_cached("p"), Some(vec![]));
    s.put_secret(&secret("A", 1)).unwrap();
    assert_eq!(s.secrets("p").unwrap(), vec![secret("A", 1)]);
    s.put_secret(&secret("A", 2)).unwrap();
    assert_eq!(s.secrets("p").unwrap(), vec![secret("A", 2)]);
    assert_eq!(s.secrets_cached("p"), Some(vec![secret("A", 2)]));
    assert!(s.delete_secret("p", "A").unwrap());
    assert!(s.secrets("p").unwrap().is_empty());
}
