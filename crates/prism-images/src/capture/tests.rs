#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};

use rustix::fs::{FileType, XattrFlags};

use super::*;

const BASE: u32 = 300_000;

fn is_root() -> bool {
    let root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        eprintln!("SKIP!!! capture tests need root (chown, mknod)");
    }
    root
}

fn own(p: &Path, id: u32) {
    std::os::unix::fs::lchown(p, Some(BASE + id), Some(BASE + id)).unwrap();
}

/// An upper directory as overlay leaves it after a sandbox ran: new files, a whiteout, an
/// opaque directory, links, and the runtime's identity files.
fn upper(dir: &Path) -> PathBuf {
    let up = dir.join("upper");
    fs::create_dir_all(up.join("app/sub")).unwrap();
    fs::create_dir_all(up.join("etc")).unwrap();
    fs::create_dir_all(up.join("opaque")).unwrap();
    fs::write(up.join("app/main.py"), "print('hi')\n").unwrap();
    fs::set_permissions(up.join("app/main.py"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::hard_link(up.join("app/main.py"), up.join("app/sub/again.py")).unwrap();
    symlink("/etc/shadow", up.join("app/evil")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        up.join("app/gone"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0),
        0,
    )
    .unwrap();
    rustix::fs::setxattr(
        up.join("opaque"),
        "user.overlay.opaque",
        b"y",
        XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        up.join("app/main.py"),
        "user.note",
        b"kept",
        XattrFlags::empty(),
    )
    .unwrap();
    fs::write(up.join("etc/hostname"), "build\n").unwrap();
    fs::write(up.join("etc/motd"), "hello\n").unwrap();
    for p in [
        "",
        "app",
        "app/sub",
        "app/main.py",
        "etc",
        "etc/motd",
        "opaque",
    ] {
        own(&up.join(p), if p.starts_with("app/") { 1000 } else { 0 });
    }
    own(&up.join("app/evil"), 1000);
    up
}

#[test]
fn an_upper_directory_becomes_a_valid_lower() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let up = upper(dir.path());
    let c = capture_layer(&store, &up, BASE, &["etc/hostname"]).unwrap();
    let layer = store.layer_dir(&c.digest);
    assert!(store.has_blob(&c.digest));
    let md = fs::metadata(layer.join("app/main.py")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    assert_eq!(
        fs::read_to_string(layer.join("app/main.py")).unwrap(),
        "print('hi')\n"
    );
    let again = fs::metadata(layer.join("app/sub/again.py")).unwrap();
    assert_eq!(again.ino(), md.ino(), "hard link kept");
    assert_eq!(
        fs::read_link(layer.join("app/evil")).unwrap(),
        PathBuf::from("/etc/shadow"),
        "a symlink stays a symlink and is not followed"
    );
    let gone = fs::symlink_metadata(layer.join("app/gone")).unwrap();
    assert!(
        gone.file_type().is_char_device() && gone.rdev() == 0,
        "whiteout kept"
    );
    let mut v = [0u8; 8];
    let n = rustix::fs::getxattr(layer.join("opaque"), "user.overlay.opaque", &mut v).unwrap();
    assert_eq!(&v[..n], b"y");
    let n = rustix::fs::getxattr(layer.join("app/main.py"), "user.note", &mut v).unwrap();
    assert_eq!(&v[..n], b"kept");
    assert_eq!(fs::metadata(layer.join("etc")).unwrap().uid(), 0);
    assert!(layer.join("etc/motd").is_file());
    assert!(
        !layer.join("etc/hostname").exists(),
        "skipped path left out"
    );
    // Content-addressed: the same upper captures to the same layer.
    let c2 = capture_layer(&store, &up, BASE, &["etc/hostname"]).unwrap();
    assert_eq!(c2, c);
    // Ids outside the sandbox's range become nobody.
    fs::write(up.join("stray"), "x").unwrap();
    std::os::unix::fs::lchown(up.join("stray"), Some(0), Some(0)).unwrap();
    let c3 = capture_layer(&store, &up, BASE, &[]).unwrap();
    assert_ne!(c3.digest, c.digest);
    let stray = fs::metadata(store.layer_dir(&c3.digest).join("stray")).unwrap();
    assert_eq!(stray.uid(), NOBODY);
}

#[test]
fn absurd_nesting_is_refused_not_recursed_into() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let up = dir.path().join("upper");
    let mut deep = up.clone();
    for _ in 0..=MAX_DEPTH {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    let e = capture_layer(&store, &up, 0, &[]).unwrap_err();
    assert!(matches!(e, CaptureError::TooDeep(_)), "{e:?}");
    let tmp: Vec<_> = fs::read_dir(store.root().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "no half-written capture left: {tmp:?}");
}
