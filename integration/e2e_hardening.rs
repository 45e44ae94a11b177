//! End-to-end hardening tests (SPEC §14) with the real binary: reloads
//! that may not change ports, a reload storm under a transfer, and what
//! start-up refuses or creates. They fail, naming the reason, when the
//! machine cannot create namespaces and TUN devices.

mod netns;

use netns::{SERVER4, Topology};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ping(t: &Topology) -> bool {
    t.in_client(&["ping", "-c", "1", "-W", "2", SERVER4])
        .status
        .success()
}

#[test]
fn a_reload_that_changes_ports_is_refused_and_port_names_keep_their_meaning() {
    require_netns!();
    // Never matches today: outbound flows arrive on lan, not wan.
    let filter = r#"
[[filter]]
name = "block-icmp-arriving-on-wan"
layer = "auth_connect"
action = "block"
protocol = "icmp"
arrival_port = "wan"
"#;
    let t = Topology::new("max_flows = 1000", filter);
    assert!(ping(&t), "ping before the reload:\n{}", t.log());
    // A port inserted before lan: compiled against the new list, "wan"
    // would name the second port, which the running gateway calls lan.
    t.rewrite_config(|c| {
        c.replacen(
            "[[port]]",
            "[[port]]\nname = \"extra\"\ndevice = \"twextra\"\nzone = \"outside\"\nroutes = [\"198.19.9.0/24\"]\n\n[[port]]",
            1,
        )
    });
    let out = t.cli(&["reload"]);
    assert!(!out.status.success(), "the reload must be refused");
    let msg = text(&out);
    assert!(
        msg.contains("port \"extra\" added") && msg.contains("tunwall.toml"),
        "the refusal names the file and what changed: {msg}"
    );
    assert!(ping(&t), "the running policy stays:\n{}", t.log());
    assert_eq!(t.stats()["policy_generation"], 1);
    t.wait_event("reload_failed", |e| e["event"] == "reload_failed");
    // A changed [flows] is refused the same way rather than half-applied.
    t.rewrite_config(|c| {
        c.replacen("[[port]]\nname = \"extra\"", "[[port]]\nname = \"gone\"", 1)
            .replace("max_flows = 1000", "max_flows = 2000")
    });
    let msg = text(&t.cli(&["reload"]));
    assert!(msg.contains("[flows]"), "{msg}");
}

#[test]
fn a_reload_storm_during_a_transfer_drops_no_packet_of_a_permitted_flow() {
    require_netns!();
    let filter = |port: u16| {
        format!(
            "\n[[filter]]\nname = \"storm\"\nlayer = \"auth_connect\"\naction = \"block\"\nprotocol = \"tcp\"\nremote_port = {port}\n"
        )
    };
    let mut t = Topology::new("max_flows = 1000", &filter(2323));
    let server = t.server.clone();
    t.spawn(&server, &["iperf3", "-s", "-1", "-B", SERVER4]);
    std::thread::sleep(Duration::from_millis(500));
    let client = Command::new("ip")
        .args([
            "netns", "exec", &t.client, "iperf3", "-c", SERVER4, "-t", "6", "-J",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("iperf3 client");
    std::thread::sleep(Duration::from_millis(700));
    // 100 reloads, each changing auth_connect: every flow of the layer is
    // reauthorized on its next packet, and the new policy still permits it.
    for i in 0..100u16 {
        let port = if i % 2 == 0 { 2324 } else { 2323 };
        t.rewrite_config(|c| {
            let start = c
                .find("\n[[filter]]\nname = \"storm\"")
                .expect("storm filter");
            format!("{}{}", &c[..start], filter(port))
        });
        let out = t.cli(&["reload"]);
        assert!(out.status.success(), "reload {i}: {}", text(&out));
        std::thread::sleep(Duration::from_millis(30));
    }
    let out = client.wait_with_output().expect("iperf3 output");
    assert!(out.status.success(), "iperf3: {}", text(&out));
    let stats = t.stats();
    assert_eq!(stats["policy_generation"], 101);
    assert!(
        stats["reauthorizations"].as_u64().unwrap_or(0) >= 50,
        "the transfer's flows were reauthorized: {stats}"
    );
    // What a reload could cause. RSTs outside the window are not on the
    // list: iperf3's teardown may answer a stale segment with a RST behind
    // the receiver's next expected sequence number, which the receiving
    // host would refuse too (RFC 5961), whatever the policy does.
    for reason in [
        "reauth_blocked",
        "tcp_out_of_window",
        "tcp_no_flow",
        "auth_connect_blocked",
    ] {
        assert_eq!(
            stats["discards"][reason].as_u64().unwrap_or(0),
            0,
            "no {reason} drop: {stats}"
        );
    }
    assert!(
        t.events()
            .iter()
            .all(|e| !(e["event"] == "flow_closed" && e["reason"] == "reauth_blocked")),
        "no flow closed by a reload"
    );
}

#[test]
fn the_socket_is_0600_and_the_event_file_0640_under_an_open_umask() {
    require_netns!();
    // Topology starts tunwall under umask 000.
    let t = Topology::new("max_flows = 1000", "");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&t.socket), 0o600);
    assert!(ping(&t));
    assert_eq!(mode(&t.events), 0o640);
}

#[test]
fn start_refuses_a_file_that_is_not_a_socket_before_touching_a_device() {
    let dir = std::env::temp_dir().join(format!("tunwall-e2e-sock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let socket = dir.join("control.sock");
    std::fs::write(&socket, "operator's notes").expect("file");
    let config = dir.join("tunwall.toml");
    // The port's namespace does not exist: had tunwall touched a device,
    // the error would be about the namespace.
    std::fs::write(
        &config,
        format!(
            "[gateway]\ncontrol_socket = \"{}\"\n\n[[port]]\nname = \"lan\"\ndevice = \"twnosuch0\"\nzone = \"inside\"\nnetns = \"tunwall-no-such-ns\"\nroutes = [\"198.18.1.0/24\"]\n\n[[port]]\nname = \"wan\"\ndevice = \"twnosuch1\"\nzone = \"outside\"\nnetns = \"tunwall-no-such-ns\"\nroutes = [\"0.0.0.0/0\"]\n",
            socket.display()
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_tunwall"))
        .args(["run", "-c"])
        .arg(&config)
        .output()
        .expect("run tunwall");
    let msg = text(&out);
    let left = std::fs::read_to_string(&socket).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(left, "operator's notes", "the file is left in place");
    assert!(!out.status.success(), "start must fail: {msg}");
    assert!(msg.contains("not a socket"), "{msg}");
    assert!(!msg.contains("namespace"), "no device was touched: {msg}");
}
