//! A network namespace for one test, so that traffic really crosses a network interface:
//! [`NetNs`] creates a namespace, a veth pair between it and this (root) namespace with an
//! address on each end, on a /24 of 10.213.0.0/16 that no other interface here uses, and
//! deletes all of it when dropped, also while a failing test unwinds.
//!
//! It needs root (CI runs as root) and iproute2's `ip`.
//!
//! ```ignore
//! let ns = NetNs::new();
//! let server = RedisServer::builder().bind(ns.host_addr()).start();
//! let out = ns.command("redis-cli")
//!     .args(["-h", &ns.host_addr().to_string(), "-p", &server.port().to_string(), "ping"])
//!     .output()?; // runs inside the namespace: reaches the server through the veth pair
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A network namespace joined to this one by a veth pair (see the module's doc).
pub struct NetNs {
    name: String,
    host_if: String,
    ns_if: String,
    /// The third byte of the pair's /24 (10.213.`subnet`.0/24), once chosen.
    subnet: Option<u8>,
}

impl NetNs {
    /// Creates the namespace, `lo` up inside it, and a veth pair with both ends up:
    /// 10.213.x.1/24 here ([`NetNs::host_addr`]), 10.213.x.2/24 inside ([`NetNs::ns_addr`]).
    /// Panics (after removing what it made) if it cannot, and at once without root.
    pub fn new() -> NetNs {
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert!(
            euid == 0,
            "this test needs root to create a network namespace (ip netns add); it runs as uid \
             {euid}: run it as root (CI does)"
        );
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let mut ns = NetNs {
            name: format!("forkworker-test.{pid}.{n}"),
            // Interface names have at most 15 bytes: "fw" + pid (at most 7 digits) + "-n" + side.
            host_if: format!("fw{pid}-{n}h"),
            ns_if: format!("fw{pid}-{n}n"),
            subnet: None,
        };
        if let Err(why) = ns.set_up() {
            drop(ns);
            panic!("create a network namespace for the test: {why}");
        }
        ns
    }

    fn set_up(&mut self) -> Result<(), String> {
        ip(&["netns", "add", &self.name])?;
        ip(&[
            "link",
            "add",
            &self.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &self.ns_if,
            "netns",
            &self.name,
        ])?;
        ip(&["-n", &self.name, "link", "set", "lo", "up"])?;
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "up"])?;
        ip(&["link", "set", &self.host_if, "up"])?;
        let subnet = self.claim_subnet()?;
        self.subnet = Some(subnet);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{}/24", self.ns_addr()),
            "dev",
            &self.ns_if,
        ])?;
        Ok(())
    }

    /// Gives the host end an address on a /24 of 10.213.0.0/16 no other interface of this
    /// namespace has (other tests may run at the same time): tries them from a point of
    /// this process's own, and gives a subnet up if another process took it at the same time.
    fn claim_subnet(&self) -> Result<u8, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let start = (std::process::id() ^ nanos) as usize;
        for i in 0..256 {
            let x = ((start + i) % 256) as u8;
            let prefix = format!("10.213.{x}.0/24");
            if !addresses_in(&prefix)?.is_empty() {
                continue;
            }
            let addr = format!("10.213.{x}.1/24");
            ip(&["addr", "add", &addr, "dev", &self.host_if])?;
            if addresses_in(&prefix)?.len() == 1 {
                return Ok(x);
            }
            ip(&["addr", "del", &addr, "dev", &self.host_if])?;
        }
        Err("every /24 of 10.213.0.0/16 is in use here".into())
    }

    /// The namespace's name (as `ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The veth end in this (the root) namespace: 10.213.x.1.
    pub fn host_addr(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 213, self.subnet.expect("set up"), 1))
    }

    /// The veth end inside the namespace: 10.213.x.2.
    pub fn ns_addr(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 213, self.subnet.expect("set up"), 2))
    }

    /// The names of the veth pair's ends: here, and inside the namespace.
    pub fn interfaces(&self) -> (&str, &str) {
        (&self.host_if, &self.ns_if)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`);
    /// add its arguments with `.arg`/`.args`. Its process is this test's child as usual.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Also while a failing test unwinds: no panic here. Deleting the host end deletes its
        // peer inside the namespace; then the namespace's name goes.
        if link_exists(&self.host_if)
            && let Err(e) = ip(&["link", "del", &self.host_if])
        {
            eprintln!("{e}");
        }
        if std::path::Path::new("/run/netns").join(&self.name).exists()
            && let Err(e) = ip(&["netns", "del", &self.name])
        {
            eprintln!("{e}");
        }
    }
}

/// Runs `ip args`; its error output if it fails.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run ip (Debian's iproute2: apt-get install iproute2): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The IPv4 addresses of this namespace's interfaces within `prefix`.
fn addresses_in(prefix: &str) -> Result<Vec<String>, String> {
    Ok(ip(&["-o", "-4", "addr", "show", "to", prefix])?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

/// Whether this namespace has an interface named `name`.
fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}
