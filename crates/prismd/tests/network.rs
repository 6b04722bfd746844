//! End-to-end tests of the network boundary as it stands: a sandbox in the default mode `none`
//! reaches its own loopback and nothing else (not the host's loopback, not the host's other
//! addresses), and malformed network modes are refused at create.
#![allow(clippy::unwrap_used)]

mod support;

use prism_types::{CreateSandboxRequest, ExecRequest};
use support::Daemon;

/// A python3 one-liner that prints `ok` if it can connect to argv[1]:argv[2] within 2 s, else
/// the error's class name.
const CONNECT: &str = "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 2); print('ok')\nexcept Exception as e:\n print(type(e).__name__)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_mode_reaches_only_the_sandbox_loopback_and_bad_modes_are_refused() {
    if !support::root_or_skip(
        "none_mode_reaches_only_the_sandbox_loopback_and_bad_modes_are_refused",
    ) {
        return;
    }
    let _ = prism_images::registry::RegistryClient::new(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let c = &d.client;
    // Host listeners: on loopback, and on every address (reachable through any host interface).
    let lo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let any = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_ips = nethosts::host_ipv4s();

    let sb = c
        .create(&CreateSandboxRequest {
            name: Some("netnone".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sb.network, "none");
    let connect = |host: String, port: u16| {
        let req = ExecRequest {
            cmd: Some(vec![
                "python3".into(),
                "-c".into(),
                CONNECT.into(),
                host,
                port.to_string(),
            ]),
            ..Default::default()
        };
        async move {
            c.exec("netnone", &req)
                .await
                .unwrap()
                .stdout
                .trim()
                .to_string()
        }
    };
    // The sandbox's own loopback works (a listener inside, reached from inside).
    let inside = c
        .exec(
            "netnone",
            &ExecRequest {
                cmd: Some(vec![
                    "python3".into(),
                    "-c".into(),
                    "import socket\ns=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\nc=socket.create_connection(s.getsockname()); print('ok')".into(),
                ]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(inside.stdout.trim(), "ok", "{inside:?}");
    // The host's loopback is another namespace's: refused.
    let got = connect("127.0.0.1".into(), lo.local_addr().unwrap().port()).await;
    assert!(
        got.ends_with("Error"),
        "a none sandbox reached the host's loopback: {got}"
    );
    for ip in host_ips {
        let got = connect(ip.clone(), any.local_addr().unwrap().port()).await;
        assert!(
            got.ends_with("Error"),
            "a none sandbox reached the host at {ip}: {got}"
        );
    }
    let got = connect("169.254.169.254".into(), 80).await;
    assert!(
        got.ends_with("Error"),
        "a none sandbox reached the metadata address: {got}"
    );
    c.destroy("netnone").await.unwrap();

    // Malformed modes: 422 with the reason.
    let http = reqwest::Client::new();
    for (mode, says) in [
        ("allow=10.0.0.0/33", "CIDR"),
        ("allow=*", "wildcard"),
        ("allow=*.com", "wildcard"),
        ("allow=example.com:0", "port"),
        ("bogus", "use none, open or allow"),
    ] {
        let r = http
            .post(format!("{}/v1/sandboxes", d.url()))
            .json(&serde_json::json!({ "network": mode }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{mode}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["code"], "invalid_request", "{mode}: {e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{mode}: {e}");
    }
}

mod nethosts;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use nethosts::{FLOOD, PROBE, TestHosts};

/// Run the probe script in sandbox `sb` over `targets`; returns target → result.
async fn probe(c: &prism_client::Client, sb: &str, targets: &[String]) -> BTreeMap<String, String> {
    let args: Vec<&str> = targets.iter().map(String::as_str).collect();
    nethosts::run_python(c, sb, PROBE, &args)
        .await
        .iter()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, v)| (t.to_string(), v.to_string()))
        .collect()
}

/// Assert each target's outcome: `true` = reached (or resolved), `false` = not.
#[track_caller]
fn expect(got: &BTreeMap<String, String>, want: &[(&String, bool)], who: &str) {
    for (t, ok) in want {
        let v = got.get(*t).map(String::as_str).unwrap_or("missing");
        let reached = v == "ok" || v.parse::<Ipv4Addr>().is_ok();
        assert_eq!(reached, *ok, "{who}: {t} → {v} (all: {got:?})");
    }
}

fn nft_table(table: &str) -> String {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "inet", table])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn links() -> String {
    let out = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn create_req(name: &str, network: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        name: Some(name.into()),
        network: Some(network.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_and_allow_reach_exactly_what_they_should_and_leave_nothing_behind() {
    if !support::root_or_skip(
        "open_and_allow_reach_exactly_what_they_should_and_leave_nothing_behind",
    ) {
        return;
    }
    let mut hosts = TestHosts::new();
    let k = u8::from_str_radix(&hosts.tag[4..], 16).unwrap();
    // "The internet": 198.51.100.2-4; "the internal network": 10.99.k.2; "metadata".
    let public = hosts.netns(
        "pub",
        "198.51.100.1/29",
        &["198.51.100.2/29", "198.51.100.3/29", "198.51.100.4/29"],
    );
    let internal_ip = Ipv4Addr::new(10, 99, k, 2);
    let internal = hosts.netns(
        "int",
        &format!("10.99.{k}.1/30"),
        &[&format!("{internal_ip}/30")],
    );
    let metadata = hosts.netns("md", "169.254.169.253/30", &["169.254.169.254/30"]);
    let sa = |ip: &str, port: u16| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    hosts.serve(
        &public,
        &[
            sa("198.51.100.2", 8080),
            sa("198.51.100.2", 8081),
            sa("198.51.100.3", 8080),
            sa("198.51.100.4", 8080),
        ],
    );
    hosts.serve(&internal, &[SocketAddr::new(internal_ip.into(), 8080)]);
    hosts.serve(&metadata, &[sa("169.254.169.254", 80)]);
    let dns = nethosts::upstream_dns(vec![
        ("open.test", Ipv4Addr::new(198, 51, 100, 2)),
        ("allowed.test", Ipv4Addr::new(198, 51, 100, 3)),
        ("denied.test", Ipv4Addr::new(198, 51, 100, 4)),
        // A listed name whose DNS points at the metadata service (rebinding, wildcard DNS).
        ("meta.test", Ipv4Addr::new(169, 254, 169, 254)),
    ])
    .await;
    // A host listener on every address (the host's own addresses must stay unreachable).
    let host_srv = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_srv.local_addr().unwrap().port();

    let dir = tempfile::tempdir().unwrap();
    let extra = format!("dns_upstream = \"{dns}\"\ndns_rate = 50");
    let mut d = Daemon::start_with(dir.path(), &extra).await;
    let c = d.client.clone();
    let t = |s: &str| s.to_string();
    let pub2 = t("198.51.100.2:8080");
    let pub2b = t("198.51.100.2:8081");
    let pub3 = t("198.51.100.3:8080");
    let pub4 = t("198.51.100.4:8080");
    let int = format!("{internal_ip}:8080");
    let md = t("169.254.169.254:80");
    let host_pub = format!("198.51.100.1:{host_port}");
    let mut host_addrs: Vec<String> = nethosts::host_ipv4s()
        .iter()
        .map(|ip| format!("{ip}:{host_port}"))
        .collect();
    host_addrs.push(format!("127.0.0.1:{host_port}"));

    // ---- open ----
    let a = c.create(&create_req("neta", "open")).await.unwrap();
    let b = c
        .create(&CreateSandboxRequest {
            cmd: Some(vec![
                "python3".into(),
                "-c".into(),
                "import socket,time\ns=socket.socket(); s.bind(('0.0.0.0', 9000)); s.listen(); time.sleep(3600)".into(),
            ]),
            ..create_req("netb", "open")
        })
        .await
        .unwrap();
    // b listens; a must not reach it.
    let b_ip = c
        .exec(
            "netb",
            &ExecRequest {
                cmd: Some(vec![
                    "python3".into(),
                    "-c".into(),
                    "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('198.51.100.2', 9)); print(s.getsockname()[0])".into(),
                ]),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .stdout
        .trim()
        .to_string();
    assert!(b_ip.starts_with("100."), "sandbox b's address: {b_ip:?}");
    let a_host = probe(&c, "neta", &[t("dns:open.test")]).await["dns:open.test"].clone();
    assert_eq!(
        a_host, "198.51.100.2",
        "open sandboxes resolve through the Prism DNS"
    );
    let ns = nethosts::nameserver(&c, "neta").await;
    let mut targets = vec![
        pub2.clone(),
        int.clone(),
        md.clone(),
        host_pub.clone(),
        format!("{ns}:{host_port}"),
        format!("{b_ip}:9000"),
    ];
    targets.extend(host_addrs.iter().cloned());
    let got = probe(&c, "neta", &targets).await;
    let mut want = vec![
        (&pub2, true),
        (&int, false),
        (&md, false),
        (&host_pub, false),
    ];
    let gw = format!("{ns}:{host_port}");
    let other = format!("{b_ip}:9000");
    want.push((&gw, false));
    want.push((&other, false));
    for h in &host_addrs {
        want.push((h, false));
    }
    expect(&got, &want, "open");
    // b reaches its own listener (the listener is real).
    let own = t("127.0.0.1:9000");
    let got_b = support::eventually(10, "b's listener", || {
        let c = c.clone();
        let own = own.clone();
        async move {
            let g = probe(&c, "netb", std::slice::from_ref(&own)).await;
            (g.get(&own).map(String::as_str) == Some("ok")).then_some(g)
        }
    })
    .await;
    assert_eq!(got_b[&own], "ok");
    // Counters move.
    let m = c.metrics("neta").await.unwrap();
    let n = m.network.expect("an open sandbox has network counters");
    assert!(n.tx_packets > 0 && n.rx_packets > 0, "{n:?}");
    let scrape = reqwest::get(format!("{}/metrics", d.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = format!("prism_sandbox_network_tx_packets{{sandbox=\"{}\"}}", a.id);
    assert!(scrape.contains(&gauge), "{gauge} missing from /metrics");
    let stats = std::process::Command::new(support::prismctl())
        .args(["--api", &d.url(), "stats", "neta"])
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(
        stats.contains("NET RX") && stats.contains("NET TX"),
        "{stats}"
    );

    // ---- allow ----
    let mode = format!("allow={internal_ip}/32,198.51.100.2:8080,allowed.test,meta.test");
    let al = c.create(&create_req("netc", &mode)).await.unwrap();
    assert_eq!(al.network, mode);
    let before = probe(&c, "netc", std::slice::from_ref(&pub3)).await;
    expect(&before, &[(&pub3, false)], "allow before resolving");
    let dns_ok = t("dns:allowed.test");
    let dns_no = t("dns:denied.test");
    let dns_md = t("dns:meta.test");
    let got = probe(
        &c,
        "netc",
        &[dns_ok.clone(), dns_no.clone(), dns_md.clone()],
    )
    .await;
    expect(
        &got,
        &[(&dns_ok, true), (&dns_no, false), (&dns_md, true)],
        "allow dns",
    );
    assert_eq!(got[&dns_ok], "198.51.100.3");
    // meta.test resolved to the metadata address, which must stay unreachable (`md` below).
    assert_eq!(got[&dns_md], "169.254.169.254");
    let got = probe(
        &c,
        "netc",
        &[
            int.clone(),
            pub2.clone(),
            pub2b.clone(),
            pub3.clone(),
            pub4.clone(),
            md.clone(),
            gw.clone(),
        ],
    )
    .await;
    expect(
        &got,
        &[
            (&int, true),
            (&pub2, true),
            (&pub2b, false),
            (&pub3, true),
            (&pub4, false),
            (&md, false),
            (&gw, false),
        ],
        "allow",
    );

    // ---- DNS flood: dropped and counted, the daemon and other sandboxes unaffected ----
    let flood = c
        .exec(
            "netc",
            &ExecRequest {
                cmd: Some(vec![
                    "python3".into(),
                    "-c".into(),
                    FLOOD.into(),
                    "3000".into(),
                ]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(flood.stdout.trim(), "sent", "{flood:?}");
    let dropped = support::eventually(10, "dropped DNS queries counted", || {
        let c = c.clone();
        async move {
            let n = c.metrics("netc").await.ok()?.network?;
            (n.dns_dropped > 0).then_some(n.dns_dropped)
        }
    })
    .await;
    assert!(dropped > 100, "only {dropped} of 3000 queries dropped");
    c.ready().await.unwrap();
    let got = probe(&c, "neta", &[t("dns:open.test")]).await;
    assert_eq!(
        got["dns:open.test"], "198.51.100.2",
        "another sandbox's DNS after a flood"
    );

    // ---- runtime change: none → open → none, no restart ----
    let dd = c.create(&create_req("netd", "none")).await.unwrap();
    let got = probe(&c, "netd", std::slice::from_ref(&pub2)).await;
    expect(&got, &[(&pub2, false)], "none");
    let out = std::process::Command::new(support::prismctl())
        .args(["--api", &d.url(), "network", "netd", "open"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let got = probe(&c, "netd", &[pub2.clone(), md.clone()]).await;
    expect(&got, &[(&pub2, true), (&md, false)], "none → open");
    assert_eq!(c.get("netd").await.unwrap().network, "open");
    let sb = c.set_network("netd", "none").await.unwrap();
    assert_eq!(sb.network, "none");
    let got = probe(&c, "netd", std::slice::from_ref(&pub2)).await;
    expect(&got, &[(&pub2, false)], "open → none");
    assert!(!links().contains(&prism_net::host_ifname(&dd.id)));
    // Bad input.
    let http = reqwest::Client::new();
    let r = http
        .patch(format!("{}/v1/sandboxes/nope/network", d.url()))
        .json(&serde_json::json!({"network": "open"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    for bad in ["bogus", "allow=*.com", "allow=10.0.0.0/40"] {
        let r = http
            .patch(format!("{}/v1/sandboxes/netd/network", d.url()))
            .json(&serde_json::json!({ "network": bad }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{bad}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["code"], "invalid_request", "{e}");
    }
    assert_eq!(c.get("netd").await.unwrap().network, "none");

    // ---- destroy leaves nothing ----
    c.destroy("netc").await.unwrap();
    let table = nft_table(&d.nft_table);
    assert!(table.contains("chain forward"), "{table}");
    assert!(!table.contains(&al.id), "{table}");
    assert!(!links().contains(&prism_net::host_ifname(&al.id)));

    // ---- kill -9, leftovers of a dead sandbox, restart ----
    d.kill9();
    let dead = "0000dead";
    let dead_if = prism_net::host_ifname(dead);
    let pool = prism_net::Pool::parse(&d.network_pool).unwrap();
    let slot = pool.slot(pool.slots() - 1).unwrap();
    let tbl = d.nft_table.clone();
    let nft = |s: &str| {
        let ok = std::process::Command::new("nft")
            .arg(s)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{s}");
    };
    nft(&format!("add chain inet {tbl} sb-{dead}"));
    nft(&format!(
        "add set inet {tbl} sb-{dead}-d4 {{ type ipv4_addr; }}"
    ));
    let peer = format!("ptz{}", hosts.tag);
    hosts.own_link(&dead_if);
    for args in [
        vec![
            "link", "add", &dead_if, "type", "veth", "peer", "name", &peer,
        ],
        vec!["addr", "add", &format!("{}/30", slot.host), "dev", &dead_if],
    ] {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let ok = std::process::Command::new("ip")
            .args(&args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{args:?}");
    }
    let d2 = Daemon::start_with(dir.path(), &extra).await;
    let c = d2.client.clone();
    support::eventually(20, "leftovers of a dead sandbox removed", || {
        let tbl = tbl.clone();
        let dead_if = dead_if.clone();
        async move {
            let t = nft_table(&tbl);
            (!t.contains(dead) && !links().contains(&dead_if)).then_some(())
        }
    })
    .await;
    // The adopted open sandbox still reaches the internet and resolves (forwarder restored).
    let got = probe(&c, "neta", &[pub2.clone(), md.clone(), t("dns:open.test")]).await;
    expect(
        &got,
        &[(&pub2, true), (&md, false)],
        "open after a daemon restart",
    );
    assert_eq!(got["dns:open.test"], "198.51.100.2");
    for id in [&a.id, &b.id, &dd.id] {
        c.destroy(id).await.unwrap();
    }
    let table = nft_table(&tbl);
    for id in [&a.id, &b.id, &al.id, &dd.id] {
        assert!(!table.contains(id.as_str()), "{id} left in {table}");
        assert!(
            !links().contains(&prism_net::host_ifname(id)),
            "{id}'s link left"
        );
    }
    drop(hosts);
}
