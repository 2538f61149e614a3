//! Facts about the model's values that every use case of the engine asks (which interface
//! carries a network's programs, which admission keys an attachment has, whether an
//! endpoint is a host-access interface, ...): the lowest part of `control/`, so that the
//! use-case files import it and not each other.

use dataplane_common::maps::{AdmitKey, VLAN_UNTAGGED};

use super::{invalid, ControlError, Result};
use crate::{
    netns,
    store::{Endpoint, Network, Tx},
};

pub use crate::netns::HOST_NS;

/// Whether `ep` is a network's host-access interface.
pub fn is_host_shim(ep: &Endpoint) -> bool {
    ep.netns == HOST_NS && !ep.netns_owned
}

/// The names of the host-access endpoints (one per network with host access).
pub(crate) fn host_shims(tx: &Tx) -> Result<Vec<String>> {
    Ok(tx.endpoints()?.into_iter().filter(is_host_shim).map(|e| e.name).collect())
}

/// Whether the process that marked a row (`owner_pid`, started at `owner_start`) still
/// runs: by pid and start time, so a recycled pid is not taken for the owner (rows from
/// before the start time was recorded, 0, go by pid alone).
pub(crate) fn owner_alive(pid: u32, start: u64) -> bool {
    match start {
        0 => pid_alive(pid),
        s => crate::store::ProcRef { pid, start: s }.alive(),
    }
}

pub(crate) fn pid_alive(pid: u32) -> bool {
    // Signal 0 only checks for existence (EPERM: it exists, someone else's).
    pid > 0 && (crate::sys::kill(pid as i32, 0) || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Admission keys of an attachment on its physical parent (by ifindex in this namespace).
pub(crate) fn admit_keys(n: &Network, mac: [u8; 6]) -> Option<Vec<AdmitKey>> {
    Some(admit_keys_at(n, parent_ifindex(n)?, mac))
}

/// The ifindex of network `n`'s physical parent in this namespace.
pub(crate) fn parent_ifindex(n: &Network) -> Option<u32> {
    netns::ifindex(physical_parent(n)?)
}

/// [`admit_keys`] with the parent's ifindex known.
pub(crate) fn admit_keys_at(n: &Network, ifindex: u32, mac: [u8; 6]) -> Vec<AdmitKey> {
    let mut keys = Vec::new();
    match &n.vlan {
        Some(v) => {
            keys.push(AdmitKey { ifindex, vlan: v.vid, mac });
            // For frames whose tag XDP cannot see (see maps.rs).
            keys.push(AdmitKey { ifindex, vlan: VLAN_UNTAGGED, mac });
        }
        None => keys.push(AdmitKey { ifindex, vlan: 0, mac }),
    }
    keys
}

/// The `mtu` option of a network, validated at create.
pub(crate) fn network_mtu(n: &Network) -> Option<u32> {
    n.options.get("mtu").and_then(|m| m.parse().ok())
}

/// The aux address name that reserves the host-access interface's address.
pub const HOST_AUX: &str = "dataplane-host";

/// A trunk parent: `IFACE.VID` (802.1Q), or `IFACE.OUTER.VID` (802.1ad QinQ: S-tag OUTER,
/// C-tag VID).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkParent {
    pub trunk: String,
    pub outer: Option<u16>,
    pub vid: u16,
}

/// Parse a trunk parent with the rules Docker applies to `IFACE.VID` (one VID, no leading
/// zeros, 1..4094), extended to `IFACE.OUTER.VID`. None: no dot, a plain parent.
pub fn parse_trunk_parent(parent: &str) -> Result<Option<TrunkParent>> {
    let Some((trunk, rest)) = parent.split_once('.') else { return Ok(None) };
    let bad = || {
        ControlError::Invalid(format!(
            "invalid 802.1Q parent {parent:?}: expected IFACE.VID (or IFACE.OUTER.VID for 802.1ad QinQ) with VID 1..4094 (e.g. eth0.50, eth0.100.50)"
        ))
    };
    let vid_of = |vid: &str| -> Result<u16> {
        if vid.is_empty() || !vid.bytes().all(|b| b.is_ascii_digit()) || vid.len() > 4 {
            return Err(bad());
        }
        if vid.len() > 1 && vid.starts_with('0') {
            // `eth0.070` and `eth0.70` would be two devices of one VLAN.
            let fixed = parent.replace(&format!(".{vid}"), &format!(".{}", vid.trim_start_matches('0')));
            return invalid(format!(
                "invalid 802.1Q parent {parent:?}: VID {vid} has a leading zero; write it as {fixed}"
            ));
        }
        let v: u16 = vid.parse().map_err(|_| bad())?;
        if !(1..=4094).contains(&v) {
            return Err(bad());
        }
        Ok(v)
    };
    if trunk.is_empty() {
        return Err(bad());
    }
    let (outer, vid) = match rest.split_once('.') {
        Some((o, v)) if !v.contains('.') => (Some(vid_of(o)?), vid_of(v)?),
        Some(_) => return Err(bad()),
        None => (None, vid_of(rest)?),
    };
    Ok(Some(TrunkParent { trunk: trunk.to_string(), outer, vid }))
}

/// Whether network `n`'s endpoints keep their programs as cls_bpf filters
/// (`-o endpoint_hooks=cls_bpf`) instead of the anti-spoofing one becoming a tcx link.
pub(crate) fn keeps_filters(n: &Network) -> bool {
    n.options.get("endpoint_hooks").is_some_and(|h| h == "cls_bpf")
}

/// The interface XDP sits on and admission keys refer to: the trunk of a VLAN parent,
/// else the parent itself.
pub fn physical_parent(n: &Network) -> Option<&str> {
    n.vlan.as_ref().map(|v| v.trunk.as_str()).or(n.parent.as_deref())
}

/// The admission keys of network `n`'s VLAN device's own MAC on its trunk (`ifindex`):
/// the device sends from it (address probes, the host's own traffic on the VLAN) and the
/// answers come back tagged to it. The eBPF VLAN device has a MAC of its own; the kernel's
/// shares the trunk's, whose untagged key is the trunk's own entry and left out here.
pub(crate) fn vlan_device_keys_at(n: &Network, ifindex: u32) -> Vec<AdmitKey> {
    let (Some(_), Some(dev)) = (&n.vlan, n.parent.as_deref()) else { return Vec::new() };
    let Some(mac) = netns::hwaddr(dev) else { return Vec::new() };
    let trunk_mac = physical_parent(n).and_then(netns::hwaddr);
    admit_keys_at(n, ifindex, mac)
        .into_iter()
        .filter(|k| !(k.vlan == VLAN_UNTAGGED && Some(k.mac) == trunk_mac))
        .collect()
}

pub(crate) fn vlan_device_keys(n: &Network) -> Vec<AdmitKey> {
    parent_ifindex(n).map(|i| vlan_device_keys_at(n, i)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::owner_alive;
    use crate::store::ProcRef;

    #[test]
    fn admission_keys_follow_the_networks_vlan() {
        use dataplane_common::maps::VLAN_UNTAGGED;
        let mut n = crate::store::Network {
            id: "0".repeat(64),
            name: "n".into(),
            driver: crate::store::Driver::Macvlan,
            created: String::new(),
            internal: false,
            ipv6: false,
            options: Default::default(),
            pools: vec![],
            parent: Some("eth0".into()),
            macvlan_mode: None,
            vlan: None,
            state: crate::store::EndpointState::Ready,
            owner_pid: 0,
            owner_start: 0,
            owner: Default::default(),
            cluster: false,
            cluster_rev: 0,
        };
        let mac = [2, 0, 0, 0, 0, 9];
        let keys = super::admit_keys_at(&n, 7, mac);
        assert_eq!(keys.len(), 1);
        assert_eq!((keys[0].ifindex, keys[0].vlan, keys[0].mac), (7, 0, mac));
        assert_eq!(super::physical_parent(&n), Some("eth0"));
        n.parent = Some("eth0.50".into());
        n.vlan = Some(crate::store::VlanParent {
            trunk: "eth0".into(),
            vid: 50,
            created: true,
            kind: crate::store::VlanKind::Ebpf,
            peer: None,
            outer: None,
            outer_created: false,
        });
        let keys = super::admit_keys_at(&n, 7, mac);
        let vlans: Vec<u16> = keys.iter().map(|k| k.vlan).collect();
        assert_eq!(vlans, vec![50, VLAN_UNTAGGED], "tagged, and for tags XDP cannot see");
        assert_eq!(super::physical_parent(&n), Some("eth0"), "a VLAN network's programs sit on its trunk");
        n.options.insert("endpoint_hooks".into(), "cls_bpf".into());
        n.options.insert("mtu".into(), "1400".into());
        assert!(super::keeps_filters(&n));
        assert_eq!(super::network_mtu(&n), Some(1400));
    }

    #[test]
    fn trunk_parents_parse_with_dockers_rules() {
        let t = super::parse_trunk_parent("eth0.100.50").unwrap().unwrap();
        assert_eq!((t.trunk.as_str(), t.outer, t.vid), ("eth0", Some(100), 50));
        assert_eq!(super::parse_trunk_parent("eth0").unwrap(), None);
        for bad in ["eth0.0", "eth0.4095", "eth0.050", ".5", "eth0.1.2.3", "eth0.x"] {
            assert!(super::parse_trunk_parent(bad).is_err(), "{bad} accepted");
        }
        let e = super::parse_trunk_parent("eth0.050").unwrap_err().to_string();
        assert!(e.contains("eth0.50"), "{e}");
    }

    #[test]
    fn an_owner_is_its_pid_and_start_time() {
        let me = ProcRef::me();
        assert!(me.start > 0);
        assert!(owner_alive(me.pid, me.start));
        // The same pid started at another time: another process (a recycled pid).
        assert!(!owner_alive(me.pid, me.start + 1), "a recycled pid was taken for the owner");
        // Rows from before the start time was recorded go by pid.
        assert!(owner_alive(me.pid, 0));
        assert!(!owner_alive(u32::MAX - 1, 0));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let (pid, start) = (child.id(), ProcRef::start_of(child.id()).unwrap_or(1));
        child.wait().unwrap();
        assert!(!owner_alive(pid, start), "a process that ended is alive");
    }
}
