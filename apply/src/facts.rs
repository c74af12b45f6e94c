//! The facts of `host.<fact>` in dynamic templates, gathered on the host just before rendering.
//! Read inside the target root (so `--root DIR` reads `DIR/etc/machine-id` and
//! `DIR/run/cloud-init/instance-data.json`), except the primary IP: a root has no network, so
//! it is the running system's (the IPv4 address of the default route's interface), or the one
//! given with `--primary-ip` / `primary-ip` in the firstboot config.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::fsroot::Root;
use crate::template::Facts;

/// cloud-init's instance data (the world-readable one, sensitive keys redacted).
pub const INSTANCE_DATA: &str = "/run/cloud-init/instance-data.json";
/// The facts read from [`INSTANCE_DATA`], as `v1.<key>`.
const CLOUD_FACTS: &[&str] = &["instance_id", "availability_zone", "region", "cloud_name"];

/// Every fact of [`crate::template::HOST_FACTS`]: its value or why the host does not have it.
pub fn gather(root: &Root, hostname: &str, primary_ip: Option<&str>) -> Facts {
    let mut facts = BTreeMap::new();
    facts.insert("hostname".to_string(), Ok(hostname.to_string()));
    facts.insert("machine_id".to_string(), machine_id(root));
    facts.insert(
        "primary_ip".to_string(),
        match primary_ip {
            Some(ip) => Ok(ip.to_string()),
            None => default_route_ipv4().map(|ip| ip.to_string()),
        },
    );
    let data = instance_data(root);
    for key in CLOUD_FACTS {
        let v = match &data {
            Err(why) => Err(why.clone()),
            Ok(v1) => match v1.get(*key) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                _ => Err(format!(
                    "{} has no v1.{key}",
                    root.display(INSTANCE_DATA).display()
                )),
            },
        };
        facts.insert(key.to_string(), v);
    }
    Facts(facts)
}

fn machine_id(root: &Root) -> Result<String, String> {
    let shown = root.display("/etc/machine-id").display().to_string();
    match root.read_text("/etc/machine-id", 4096) {
        Ok(Some(t)) => {
            let id = t.lines().next().unwrap_or("").trim();
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(id.to_ascii_lowercase())
            } else if id.is_empty() || id == "uninitialized" {
                Err(format!("{shown} is not initialized yet"))
            } else {
                Err(format!("{shown} does not hold 32 hex digits"))
            }
        }
        Ok(None) => Err(format!("{shown} does not exist")),
        Err(e) => Err(format!("{shown}: {e}")),
    }
}

/// The `v1` object of the instance data.
fn instance_data(root: &Root) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let shown = root.display(INSTANCE_DATA).display().to_string();
    let text = match root.read_text(INSTANCE_DATA, 16 << 20) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(format!(
                "{shown} does not exist (cloud-init wrote no instance data)"
            ))
        }
        Err(e) => return Err(format!("{shown}: {e}")),
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(mut top)) => match top.remove("v1") {
            Some(serde_json::Value::Object(v1)) => Ok(v1),
            _ => Err(format!("{shown} has no v1 object")),
        },
        Ok(_) => Err(format!("{shown} is not a JSON object")),
        Err(e) => Err(format!("{shown} is not JSON: {e}")),
    }
}

/// The interface of the IPv4 default route (the lowest metric) in `/proc/net/route` text.
pub fn default_route_interface(route: &str) -> Option<String> {
    route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let metric: u64 = f.get(6)?.parse().ok()?;
            // RTF_UP; destination and mask 0.0.0.0.
            (f.get(1)? == &"00000000" && f.get(7)? == &"00000000" && flags & 1 == 1)
                .then(|| (metric, f[0].to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The IPv4 address of the running system's default route interface.
fn default_route_ipv4() -> Result<Ipv4Addr, String> {
    let route =
        std::fs::read_to_string("/proc/net/route").map_err(|e| format!("/proc/net/route: {e}"))?;
    let iface = default_route_interface(&route)
        .ok_or_else(|| "no IPv4 default route in /proc/net/route".to_string())?;
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))?;
    addrs
        .filter(|a| a.interface_name == iface)
        .find_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .ok_or_else(|| format!("{iface}, the default route's interface, has no IPv4 address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_with_the_lowest_metric() {
        let route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth1\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
            eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_route_interface(route).as_deref(), Some("eth0"));
        let none = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
            eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\n";
        assert_eq!(default_route_interface(none), None);
    }
}
