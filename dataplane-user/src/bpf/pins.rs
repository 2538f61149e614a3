//! Pin layout under the bpffs directory. One place, so nothing else invents paths.
//!
//! ```text
//! <bpffs>/maps/DP_ADMIT, DP_COUNTERS         shared maps (pinned by name)
//! <bpffs>/links/<netns>/xdp-<iface>          one pinned XDP link per parent interface
//! <bpffs>/links/<netns>/tcin-<iface>         tcx ingress link (VLAN steering) per interface
//! <bpffs>/progs/dp_ep_out                    endpoint program, loaded once and reused
//! ```
//! `<netns>` is `host` for the namespace dataplane runs in, or `ns-<name>` for a named
//! namespace given with --netns (ifindexes are only unique per namespace).

use std::path::{Path, PathBuf};

use dataplane_common::maps::{ADMIT_MAP, COUNTERS_MAP};

#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Pins { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `/run/dataplane/<what>-<hash of the bpffs dir>`: lock files of this instance (the
    /// bpffs dir is unique per instance; /run is cleared at boot, as the locks should be).
    pub fn run_path(&self, what: &str) -> PathBuf {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.root.as_os_str().as_encoded_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        PathBuf::from(format!("/run/dataplane/{what}-{h:016x}"))
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn admit_map(&self) -> PathBuf {
        self.maps_dir().join(ADMIT_MAP)
    }

    pub fn counters_map(&self) -> PathBuf {
        self.maps_dir().join(COUNTERS_MAP)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn netns_dir(&self, netns: Option<&str>) -> PathBuf {
        self.links_dir().join(netns_tag(netns))
    }

    pub fn xdp_link(&self, netns: Option<&str>, iface: &str) -> PathBuf {
        self.netns_dir(netns).join(format!("xdp-{}", encode(iface)))
    }

    /// tcx ingress link of `prog` on `iface`.
    pub fn tc_link(&self, netns: Option<&str>, iface: &str) -> PathBuf {
        self.netns_dir(netns).join(format!("tcin-{}", encode(iface)))
    }

    /// The two link pins (egress, ingress) of an endpoint interface `ifname` inside the
    /// namespace at `netns_path`: its anti-spoofing program, and where an older version
    /// pinned its rx-counting program (see `endpoints::rx_counted_by_kernel`).
    pub fn endpoint_links(&self, netns_path: &str, ifname: &str) -> [PathBuf; 2] {
        let dir = self.netns_dir(Some(netns_path));
        [dir.join(format!("tceg-{}", encode(ifname))), dir.join(format!("tcin-{}", encode(ifname)))]
    }

    /// The two link pins (egress, ingress) of a Docker endpoint's interface, keyed by its
    /// ifindex: Docker moves and renames the interface, the ifindex stays.
    pub fn docker_endpoint_links(&self, ifindex: u32) -> [PathBuf; 2] {
        let dir = self.links_dir().join("docker");
        [dir.join(format!("tceg-{ifindex}")), dir.join(format!("tcin-{ifindex}"))]
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Programs kept loaded for reuse (endpoint programs).
    pub fn progs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }

    /// The directory that says which store owns this bpffs dir (bpffs holds no regular
    /// files, so the marker is a directory named after the store's instance id).
    pub fn owner_marker(&self, instance: &str) -> PathBuf {
        self.root.join(format!("owner-{}", &instance[..16.min(instance.len())]))
    }

    /// Owner markers present (normally zero or one).
    pub fn owner_markers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("owner-")))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }
}

/// Which hook a pinned link or program sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
}

/// A pin under `links/`, read back from its path (the inverse of the builders above).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPin {
    /// The namespace tag (`host`, `docker`, `ns-...`).
    pub tag: String,
    pub hook: Hook,
    /// The interface name (decoded), or for `docker` pins the interface's ifindex.
    pub iface: String,
}

impl LinkPin {
    pub fn parse(tag: &str, pin: &Path) -> Option<LinkPin> {
        let file = pin.file_name()?.to_string_lossy().into_owned();
        let (hook, rest) = if let Some(r) = file.strip_prefix("xdp-") {
            (Hook::Xdp, r)
        } else if let Some(r) = file.strip_prefix("tcin-") {
            (Hook::TcIngress, r)
        } else {
            (Hook::TcEgress, file.strip_prefix("tceg-")?)
        };
        Some(LinkPin { tag: tag.to_string(), hook, iface: decode(rest) })
    }

    /// In the namespace dataplane runs in.
    pub fn is_host(&self) -> bool {
        self.tag == "host"
    }

    /// A Docker endpoint's (keyed by ifindex).
    pub fn is_docker(&self) -> bool {
        self.tag == "docker"
    }
}

impl Pins {
    /// The XDP link pin beside tc ingress pin `tc_pin` of the same interface.
    pub fn xdp_beside(&self, tc_pin: &Path) -> Option<PathBuf> {
        let file = tc_pin.file_name()?.to_string_lossy().into_owned();
        Some(tc_pin.with_file_name(format!("xdp-{}", file.strip_prefix("tcin-")?)))
    }
}

/// Every endpoint's pair of program pins ([egress, ingress]) kept for a namespace path,
/// with that namespace's tag (as [`netns_tag`] makes it), for the tags `wanted` says yes
/// to (the others' dirs are not read).
pub fn endpoint_pin_pairs(pins: &Pins, wanted: impl Fn(&str) -> bool) -> Vec<(String, [PathBuf; 2])> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(pins.links_dir()) else { return out };
    for ns in rd.flatten() {
        let tag = ns.file_name().to_string_lossy().into_owned();
        if !tag.starts_with("ns-") || !wanted(&tag) {
            continue;
        }
        let Ok(links) = std::fs::read_dir(ns.path()) else { continue };
        for l in links.flatten() {
            let file = l.file_name().to_string_lossy().into_owned();
            if let Some(ifname) = file.strip_prefix("tceg-") {
                out.push((tag.clone(), [l.path(), ns.path().join(format!("tcin-{ifname}"))]));
            }
        }
    }
    out.sort();
    out
}

pub fn netns_tag(netns: Option<&str>) -> String {
    match netns {
        None => "host".to_string(),
        // A path such as /proc/123/ns/net becomes a single path component.
        Some(n) => format!("ns-{}", encode(&n.trim_start_matches('/').replace('/', "_"))),
    }
}

/// A name as a valid bpffs path component: bpffs refuses names with a dot (EPERM), and
/// interface and namespace names may have them (`eth0.50`, `a.b`). `%` and `.` are
/// percent-encoded, so the mapping is one to one and names without them are unchanged.
pub fn encode(name: &str) -> String {
    name.replace('%', "%25").replace('.', "%2e")
}

/// The inverse of [`encode`], for showing pin names.
pub fn decode(component: &str) -> String {
    component.replace("%2e", ".").replace("%25", "%")
}

/// Human name of a namespace for messages.
pub fn netns_label(netns: Option<&str>) -> String {
    match netns {
        None => "the current network namespace".to_string(),
        Some(n) => format!("network namespace {n:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let p = Pins::new("/sys/fs/bpf/dataplane");
        assert_eq!(p.admit_map(), Path::new("/sys/fs/bpf/dataplane/maps/DP_ADMIT"));
        assert_eq!(p.xdp_link(None, "eth1"), Path::new("/sys/fs/bpf/dataplane/links/host/xdp-eth1"));
        assert_eq!(
            p.xdp_link(Some("/proc/42/ns/net"), "eth0"),
            Path::new("/sys/fs/bpf/dataplane/links/ns-proc_42_ns_net/xdp-eth0")
        );
        assert_eq!(p.xdp_link(Some("lab"), "b0"), Path::new("/sys/fs/bpf/dataplane/links/ns-lab/xdp-b0"));
    }

    #[test]
    fn link_pins_read_back_as_built() {
        let p = Pins::new("/sys/fs/bpf/dataplane");
        let tc = p.tc_link(None, "trunk0.73");
        assert_eq!(
            LinkPin::parse("host", &tc),
            Some(LinkPin { tag: "host".into(), hook: Hook::TcIngress, iface: "trunk0.73".into() })
        );
        assert_eq!(p.xdp_beside(&tc), Some(p.xdp_link(None, "trunk0.73")));
        let [eg, ing] = p.endpoint_links("/run/netns/a.b", "eth0");
        assert_eq!(LinkPin::parse("ns-x", &eg).map(|l| l.hook), Some(Hook::TcEgress));
        assert_eq!(LinkPin::parse("ns-x", &ing).map(|l| l.hook), Some(Hook::TcIngress));
        let [deg, _] = p.docker_endpoint_links(1073741825);
        let d = LinkPin::parse("docker", &deg).unwrap();
        assert!(d.is_docker() && d.iface == "1073741825");
        assert_eq!(LinkPin::parse("host", Path::new("/x/owner-abc")), None);
    }

    #[test]
    fn every_pin_name_is_valid_for_bpffs() {
        let p = Pins::new("/sys/fs/bpf/dataplane");
        let names = ["trunk0.73", "my.nic", "a%2eb", "a.b", "x%", "..."];
        let mut seen = std::collections::BTreeSet::new();
        for n in names {
            for path in [p.xdp_link(None, n), p.tc_link(None, n)]
                .into_iter()
                .chain(p.endpoint_links(&format!("/run/netns/{n}"), n))
            {
                let rel = path.strip_prefix(p.root()).unwrap();
                assert!(!rel.to_string_lossy().contains('.'), "{} has a dot", path.display());
                assert!(seen.insert(path.clone()), "{} is not unique", path.display());
            }
            assert_eq!(decode(&encode(n)), n);
        }
    }
}
