//! The generated nftables scripts against the real `nft` (as root): the base, an `open` and an
//! `allow` sandbox, DNS elements with timeouts, listing and removal — in a table of this test's
//! own, deleted at the end.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::process::Command;

use prism_net::nft::{self, Policy, SandboxRules};
use prism_net::{Pool, host_ifname};

struct Table(String);

impl Drop for Table {
    fn drop(&mut self) {
        for (fam, name) in [("inet", self.0.clone()), ("ip", format!("{}_nat", self.0))] {
            let _ = Command::new("nft")
                .args(["delete", "table", fam, &name])
                .status();
        }
    }
}

#[test]
fn scripts_are_accepted_by_nft_and_removal_leaves_only_the_base() {
    if !nix_root() {
        eprintln!("SKIP scripts_are_accepted_by_nft_and_removal_leaves_only_the_base: needs root");
        return;
    }
    let table = Table(format!("pnt_{}", std::process::id()));
    let t = table.0.as_str();
    let pool = Pool::parse("100.127.252.0/22").unwrap();
    nft::apply(&nft::base_script(t, &pool)).unwrap();
    // Idempotent: the base can be written again while sandboxes exist.
    let rules = |id: &str, n: u32, policy: Policy| SandboxRules {
        id: id.into(),
        ifname: host_ifname(id),
        host: pool.slot(n).unwrap().host,
        sandbox: pool.slot(n).unwrap().sandbox,
        proxy_port: matches!(policy, Policy::Allow { .. }).then_some(3129),
        policy,
        dns: true,
    };
    nft::apply(&nft::sandbox_script(
        t,
        &rules("aaa", 0, Policy::Open),
        &pool,
    ))
    .unwrap();
    let allow = Policy::Allow {
        cidrs: vec![
            ("10.99.0.0".parse().unwrap(), 16),
            ("fd00::".parse().unwrap(), 8),
        ],
        host_ports: vec![("198.51.100.2".parse().unwrap(), 8080)],
    };
    nft::apply(&nft::sandbox_script(
        t,
        &rules("bbb", 1, allow.clone()),
        &pool,
    ))
    .unwrap();
    // Re-applying (a mode change) replaces, it does not fail or duplicate.
    nft::apply(&nft::sandbox_script(t, &rules("bbb", 1, allow), &pool)).unwrap();
    nft::apply(&nft::base_script(t, &pool)).unwrap();
    let a = [Ipv4Addr::new(198, 51, 100, 3)];
    for _ in 0..2 {
        nft::apply(&nft::dns_elements_script(t, "bbb", &a, None, 60)).unwrap();
        nft::apply(&nft::dns_elements_script(t, "bbb", &a, Some(443), 60)).unwrap();
    }
    let listed = list_table(t);
    assert!(listed.contains("198.51.100.3 timeout 1m"), "{listed}");
    assert_eq!(listed.matches("redirect to :3129").count(), 2, "{listed}");
    assert_eq!(
        listed.matches("ip daddr 10.99.0.0/16 accept").count(),
        1,
        "{listed}"
    );
    let objects = nft::list_objects(t).unwrap();
    for o in [
        "sb-aaa",
        "sbin-aaa",
        "sb-bbb",
        "sb-bbb-d4",
        "sb-bbb-dp4",
        "sbnat-bbb",
        "prerouting",
        "ifaces_nat",
        "forward",
        "ifaces",
    ] {
        assert!(objects.iter().any(|x| x == o), "{o} not in {objects:?}");
    }
    nft::remove(t, "aaa", &host_ifname("aaa"), &objects).unwrap();
    nft::remove(t, "bbb", &host_ifname("bbb"), &objects).unwrap();
    let left = nft::list_objects(t).unwrap();
    assert!(left.iter().all(|o| nft::owner_of(o).is_none()), "{left:?}");
    let listed = list_table(t);
    assert!(!listed.contains("prsb"), "map elements left: {listed}");
    // Removing again is fine.
    nft::remove(t, "aaa", &host_ifname("aaa"), &left).unwrap();
}

/// `nft list table inet <t>`.
fn list_table(t: &str) -> String {
    let out = Command::new("nft")
        .args(["list", "table", "inet", t])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn nix_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}
