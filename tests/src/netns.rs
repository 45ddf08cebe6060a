//! A multi-host testbed on one machine: network namespaces joined by a bridge (root only).
//!
//! Host 0 is the Hub; hosts 1..=N are nodes. Every host has one interface, `eth0`, with address
//! `10.77.0.<index + 1>/24`, plugged into a bridge that lives in a namespace of its own (the LAN),
//! so the testbed touches nothing outside the namespaces it creates. The Hub's uplink can be
//! shaped with `tc` (a token bucket on the Hub's egress), and any host can be cut off from the
//! LAN and healed. Dropping the testbed kills what runs in it and deletes the namespaces.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The testbed.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    hosts: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()))
    }
}

/// Whether this machine can build a testbed: root, and `ip` with namespace support.
pub fn available() -> bool {
    crate::is_root() && Command::new("ip").args(["netns", "list"]).output().is_ok_and(|o| o.status.success())
}

impl Testbed {
    /// Creates the LAN and `nodes + 1` hosts (host 0 is the Hub).
    pub fn new(nodes: usize) -> Result<Self, String> {
        let prefix = format!("sd{}x{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed));
        let tb = Self { prefix, hosts: nodes + 1 };
        let lan = tb.lan();
        ip(&["netns", "add", &lan])?;
        ip(&["-n", &lan, "link", "set", "lo", "up"])?;
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan, "link", "set", "br0", "up"])?;
        for i in 0..tb.hosts {
            let ns = tb.ns(i);
            let port = format!("p{i}");
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &lan])?;
            ip(&["-n", &lan, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &lan, "link", "set", &port, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", tb.addr(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // A default route, so multicast (mDNS) has a way out.
            ip(&["-n", &ns, "route", "add", "default", "dev", "eth0"])?;
        }
        Ok(tb)
    }

    fn lan(&self) -> String {
        format!("{}-lan", self.prefix)
    }

    /// The namespace of host `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    /// The address of host `i`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, i as u8 + 1)
    }

    /// The prefix that runs a program on host `i`.
    pub fn exec(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(i)]
    }

    /// Shapes what host `i` sends (for the Hub: its uplink) to `rate` (tc syntax, e.g. `400mbit`).
    pub fn shape(&self, i: usize, rate: &str) -> Result<(), String> {
        let ns = self.ns(i);
        ip(&[
            "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate, "burst",
            "256kb", "latency", "100ms",
        ])
    }

    /// Cuts host `i` off the other node hosts (not off the Hub, host 0), or heals it: blackhole
    /// routes on both sides, so established connections stall the way a failed switch makes them.
    pub fn partition_from_nodes(&self, i: usize, cut: bool) -> Result<(), String> {
        let verb = if cut { "add" } else { "del" };
        for j in 1..self.hosts {
            if j == i {
                continue;
            }
            ip(&["-n", &self.ns(i), "route", verb, "blackhole", &format!("{}/32", self.addr(j))])?;
            ip(&["-n", &self.ns(j), "route", verb, "blackhole", &format!("{}/32", self.addr(i))])?;
        }
        Ok(())
    }

    /// Cuts host `i` off the LAN (its bridge port goes down), or heals it.
    pub fn set_connected(&self, i: usize, up: bool) -> Result<(), String> {
        ip(&["-n", &self.lan(), "link", "set", &format!("p{i}"), if up { "up" } else { "down" }])
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let mut all: Vec<String> = (0..self.hosts).map(|i| self.ns(i)).collect();
        all.push(self.lan());
        for ns in &all {
            if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        for ns in &all {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
