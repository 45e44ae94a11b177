//! A VPN gateway for end-to-end tests (SPEC §1 shape (b), §11), built by
//! `scripts/vpn-topology.sh` — the same script `make demo-vpn` uses: a
//! gateway namespace with a wireguard-go interface and tunwall's two TUN
//! ports steered by policy routing, a server behind it, and three VPN
//! clients (alice, bob, carol) with their own wireguard-go. Torn down on
//! drop, also when the test fails: tunwall first, then the script's `down`
//! (the wireguard-go processes it started, by PID, and the namespaces).

use super::Topology;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const SERVER: &str = "198.18.200.2";
pub const ALICE: &str = "198.18.100.2";
pub const BOB: &str = "198.18.100.3";
pub const CAROL: &str = "198.18.100.4";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct VpnLab {
    pub dir: PathBuf,
    /// Names (NS_GW, WG_GW, TUN_VPN…) and keys (KEY_ALICE…) from the script.
    pub env: HashMap<String, String>,
    pub gateway: Option<Topology>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/vpn-topology.sh")
}

/// Fails the test when wireguard-go or wg is missing: a green run must
/// mean the WireGuard tests ran (`make deps` installs both).
fn require_wireguard() {
    for tool in ["wireguard-go", "wg"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "end-to-end test cannot run: {tool} is missing (make deps installs it)"
        );
    }
}

impl VpnLab {
    /// Builds the topology and starts tunwall in the gateway namespace with
    /// `policy` (filters, identities…) after the generated ports and
    /// `[[wireguard]]` section (refresh `refresh`, bound to port "vpn").
    pub fn new(refresh: &str, policy: impl FnOnce(&HashMap<String, String>) -> String) -> VpnLab {
        crate::require_netns!();
        require_wireguard();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("tunwall-vpn-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut lab = VpnLab {
            dir,
            env: HashMap::new(),
            gateway: None,
        };
        let out = Command::new(script())
            .arg("up")
            .arg(&lab.dir)
            .arg(&tag)
            .output()
            .expect("vpn-topology.sh");
        assert!(
            out.status.success(),
            "vpn-topology.sh up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(lab.dir.join("env")).expect("env");
        lab.env = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = format!(
            r#"
[[port]]
name = "vpn"
device = "{vpn}"
zone = "inside"
netns = "{gw}"
routes = ["198.18.100.0/24"]

[[port]]
name = "srv"
device = "{srv}"
zone = "outside"
netns = "{gw}"
routes = ["198.18.200.0/24"]

[[wireguard]]
interface = "{wg}"
netns = "{gw}"
refresh = "{refresh}"
port = "vpn"

{policy}
"#,
            vpn = lab.var("TUN_VPN"),
            srv = lab.var("TUN_SRV"),
            gw = lab.var("NS_GW"),
            wg = lab.var("WG_GW"),
            policy = policy(&lab.env),
        );
        lab.gateway = Some(Topology::external(&body));
        lab
    }

    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the topology's env"))
    }

    pub fn gw(&mut self) -> &mut Topology {
        self.gateway.as_mut().expect("tunwall running")
    }

    /// Runs a program in a namespace named by its env variable (NS_ALICE…).
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", self.var(ns)])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Routes around tunwall (`on`) or through it again (`off`).
    pub fn bypass(&self, on: bool) {
        let out = Command::new(script())
            .arg("bypass")
            .arg(&self.dir)
            .arg(if on { "on" } else { "off" })
            .output()
            .expect("vpn-topology.sh");
        assert!(out.status.success(), "bypass: {out:?}");
    }
}

impl Drop for VpnLab {
    fn drop(&mut self) {
        drop(self.gateway.take());
        let _ = Command::new(script()).arg("down").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
