//! Links, addresses and routes over rtnetlink, in this or another network namespace.
//!
//! A netlink socket belongs to the namespace it was created in, so a handle for another
//! namespace is made by moving this thread there, opening the socket, and moving back.
//! Requests are driven on a small current-thread runtime: callers stay synchronous.

use std::{
    fs::File,
    net::IpAddr,
    os::fd::{AsRawFd, RawFd},
    path::Path,
};

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, MacVlanMode},
    Handle, LinkMacVlan, LinkUnspec, LinkVeth, LinkVlan, RouteMessageBuilder,
};

#[derive(Debug, thiserror::Error)]
#[error("{op}: {message}")]
pub struct NlError {
    pub op: String,
    pub errno: Option<i32>,
    pub message: String,
}

impl NlError {
    fn new(op: impl Into<String>, e: rtnetlink::Error) -> NlError {
        let (errno, message) = match &e {
            rtnetlink::Error::NetlinkError(m) => {
                let io = m.to_io();
                (io.raw_os_error(), io.to_string())
            }
            other => (None, other.to_string()),
        };
        NlError { op: op.into(), errno, message }
    }

    fn io(op: impl Into<String>, e: std::io::Error) -> NlError {
        NlError { op: op.into(), errno: e.raw_os_error(), message: e.to_string() }
    }

    pub fn is(&self, errno: i32) -> bool {
        self.errno == Some(errno)
    }
}

pub type Result<T> = std::result::Result<T, NlError>;

pub struct Nl {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

#[derive(Clone, Debug)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub loopback: bool,
    pub up: bool,
    pub kind: Option<String>,
    pub mtu: Option<u32>,
    /// How an XDP program is attached, if one is: "native", "generic" or "offload".
    pub xdp: Option<&'static str>,
    /// The lower device (IFLA_LINK) of a VLAN or macvlan device.
    pub link: Option<u32>,
    /// Frames and bytes the kernel counted as received (IFLA_STATS64).
    pub rx: Option<(u64, u64)>,
}

fn info_of(m: &LinkMessage) -> LinkInfo {
    let mut li = LinkInfo {
        index: m.header.index,
        name: String::new(),
        mac: None,
        loopback: m.header.flags.contains(LinkFlags::Loopback),
        up: m.header.flags.contains(LinkFlags::Up),
        kind: None,
        mtu: None,
        xdp: None,
        link: None,
        rx: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => li.name = n.clone(),
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(b);
                li.mac = Some(mac);
            }
            LinkAttribute::Mtu(m) => li.mtu = Some(*m),
            LinkAttribute::Link(l) => li.link = Some(*l),
            LinkAttribute::Stats64(st) => li.rx = Some((st.rx_packets, st.rx_bytes)),
            LinkAttribute::Xdp(x) => {
                use rtnetlink::packet_route::link::{LinkXdp, XdpAttached};
                for a in x {
                    if let LinkXdp::Attached(m) = a {
                        li.xdp = match m {
                            XdpAttached::Driver => Some("native"),
                            XdpAttached::SocketBuffer => Some("generic"),
                            XdpAttached::Hardware => Some("offload"),
                            XdpAttached::Multiple => Some("several"),
                            _ => None,
                        };
                    }
                }
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let rtnetlink::packet_route::link::LinkInfo::Kind(k) = i {
                        li.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    li
}

/// Received packets and bytes (IFLA_STATS64) of every link in the network namespace at
/// `path`, by ifindex: one link dump over a plain netlink socket opened there. No runtime
/// and no rtnetlink connection: `stats` and the metrics read one namespace per endpoint,
/// and a runtime and connection per namespace cost ~15% more CPU at 100 endpoints.
pub fn rx_by_link_in(path: &Path) -> Result<std::collections::BTreeMap<u32, (u64, u64)>> {
    use rtnetlink::packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
    use rtnetlink::packet_route::RouteNetlinkMessage;
    use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

    let op = || format!("reading interface statistics in network namespace {}", path.display());
    let io = |e: std::io::Error| NlError::io(op(), e);
    let mut socket = with_netns(path, || Socket::new(NETLINK_ROUTE)).map_err(io)?.map_err(io)?;
    socket.bind_auto().map_err(io)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
    let mut req = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0).map_err(io)?;

    let mut out = std::collections::BTreeMap::new();
    loop {
        let (data, _) = socket.recv_from_full().map_err(io)?;
        let mut at = 0;
        while at < data.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..]).map_err(|e| NlError {
                op: op(),
                errno: None,
                message: e.to_string(),
            })?;
            at += (m.header.length as usize).max(1);
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    let io = e.to_io();
                    return Err(NlError { op: op(), errno: io.raw_os_error(), message: io.to_string() });
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    if let Some(rx) = info_of(&l).rx {
                        out.insert(l.header.index, rx);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Run `f` with this thread in the network namespace at `path`, then move back.
pub fn with_netns<T>(path: &Path, f: impl FnOnce() -> T) -> std::io::Result<T> {
    let home = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(path)?;
    crate::netns::set(target.as_raw_fd())?;
    let out = f();
    if let Err(e) = crate::netns::set(home.as_raw_fd()) {
        // Continuing in the wrong namespace would act on the wrong interfaces.
        panic!("cannot return to the original network namespace: {e}");
    }
    Ok(out)
}

impl Nl {
    /// A handle on the current thread's network namespace.
    pub fn here() -> Result<Nl> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| NlError::io("starting the netlink runtime", e))?;
        let handle = {
            let _g = rt.enter();
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| NlError::io("opening a netlink socket", e))?;
            rt.spawn(conn);
            handle
        };
        Ok(Nl { rt, handle })
    }

    /// A handle on the network namespace at `path`.
    pub fn in_netns(path: &Path) -> Result<Nl> {
        with_netns(path, Nl::here)
            .map_err(|e| NlError::io(format!("entering network namespace {}", path.display()), e))?
    }

    pub fn link(&self, name: &str) -> Result<Option<LinkInfo>> {
        let h = self.handle.clone();
        let name = name.to_string();
        self.rt.block_on(async move {
            let mut s = h.link().get().match_name(name.clone()).execute();
            match s.try_next().await {
                Ok(Some(m)) => Ok(Some(info_of(&m))),
                Ok(None) => Ok(None),
                Err(rtnetlink::Error::NetlinkError(e)) if e.to_io().raw_os_error() == Some(libc::ENODEV) => Ok(None),
                Err(e) => Err(NlError::new(format!("looking up {name}"), e)),
            }
        })
    }

    /// How an error names interface `index`: by its name where it still has one.
    fn describe(&self, index: u32) -> String {
        let h = self.handle.clone();
        let name = self.rt.block_on(async move {
            let mut s = h.link().get().match_index(index).execute();
            s.try_next().await.ok().flatten().map(|m| info_of(&m).name)
        });
        match name {
            Some(n) => format!("{n} (ifindex {index})"),
            None => format!("ifindex {index}"),
        }
    }

    pub fn links(&self) -> Result<Vec<LinkInfo>> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let mut out = Vec::new();
            let mut s = h.link().get().execute();
            while let Some(m) = s.try_next().await.map_err(|e| NlError::new("listing links", e))? {
                out.push(info_of(&m));
            }
            Ok(out)
        })
    }

    /// Create a macvlan of `parent_index` named `name`, with `mac`, directly inside the
    /// namespace `netns_fd` when given.
    #[allow(clippy::too_many_arguments)] // each is one attribute of the one request
    pub fn add_macvlan(
        &self,
        name: &str,
        parent_index: u32,
        mode: crate::model::MacvlanMode,
        mac: [u8; 6],
        netns_fd: Option<RawFd>,
        ifindex: Option<u32>,
        mtu: Option<u32>,
    ) -> Result<()> {
        use crate::model::MacvlanMode as M;
        let mode = match mode {
            M::Bridge => MacVlanMode::Bridge,
            M::Private => MacVlanMode::Private,
            M::Vepa => MacVlanMode::Vepa,
            M::Passthru => MacVlanMode::Passthrough,
        };
        let mut b = LinkMacVlan::new(name, parent_index, mode).address(mac.to_vec());
        if let Some(i) = ifindex {
            b = b.index(i);
        }
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        if let Some(fd) = netns_fd {
            b = b.setns_by_fd(fd);
        }
        let msg = b.build();
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().add(msg).execute().await })
            .map_err(|e| NlError::new(format!("creating macvlan {name}"), e))
    }

    /// An 802.1Q subinterface (needs the kernel's 8021q support).
    pub fn add_vlan(&self, name: &str, trunk_index: u32, vid: u16) -> Result<()> {
        let msg = LinkVlan::new(name, trunk_index, vid).build();
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().add(msg).execute().await })
            .map_err(|e| NlError::new(format!("creating VLAN device {name}"), e))
    }

    /// An 802.1ad (S-tag) VLAN device: the outer device of a QinQ stack.
    pub fn add_vlan_8021ad(&self, name: &str, trunk_index: u32, vid: u16) -> Result<()> {
        use rtnetlink::packet_route::link::VlanProtocol;
        let msg = LinkVlan::new(name, trunk_index, vid).protocol(VlanProtocol::Ieee8021Ad).build();
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().add(msg).execute().await })
            .map_err(|e| NlError::new(format!("creating 802.1ad VLAN device {name}"), e))
    }

    pub fn add_veth(&self, name: &str, peer: &str) -> Result<()> {
        let msg = LinkVeth::new(name, peer).build();
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().add(msg).execute().await })
            .map_err(|e| NlError::new(format!("creating veth pair {name}/{peer}"), e))
    }

    pub fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().set(msg).execute().await })
            .map_err(|e| NlError::new(format!("bringing up {}", self.describe(index)), e))
    }

    pub fn del_link(&self, index: u32) -> Result<()> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().del(index).execute().await })
            .map_err(|e| NlError::new(format!("deleting {}", self.describe(index)), e))
    }

    pub fn add_addr(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
        let h = self.handle.clone();
        self.rt
            .block_on(async move {
                let mut req = h.address().add(index, ip, prefix);
                if ip.is_ipv6() {
                    // IPAM already guarantees uniqueness; duplicate address detection would
                    // only keep a new endpoint's IPv6 address unusable for a second or two.
                    req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
                }
                req.execute().await
            })
            .map_err(|e| NlError::new(format!("adding address {ip}/{prefix} to {}", self.describe(index)), e))
    }

    pub fn add_default_route(&self, gateway: IpAddr, index: u32) -> Result<()> {
        let msg = match gateway {
            IpAddr::V4(g) => {
                RouteMessageBuilder::<std::net::Ipv4Addr>::new().gateway(g).output_interface(index).build()
            }
            IpAddr::V6(g) => {
                RouteMessageBuilder::<std::net::Ipv6Addr>::new().gateway(g).output_interface(index).build()
            }
        };
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.route().add(msg).execute().await })
            .map_err(|e| NlError::new(format!("adding default route via {gateway} on {}", self.describe(index)), e))
    }

    /// Every address as (ifindex, address, prefix).
    pub fn addrs(&self) -> Result<Vec<(u32, IpAddr, u8)>> {
        use rtnetlink::packet_route::address::AddressAttribute;
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let mut out = Vec::new();
            let mut s = h.address().get().execute();
            while let Some(m) = s.try_next().await.map_err(|e| NlError::new("listing addresses", e))? {
                for a in &m.attributes {
                    if let AddressAttribute::Address(ip) = a {
                        out.push((m.header.index, *ip, m.header.prefix_len));
                    }
                }
            }
            Ok(out)
        })
    }

    /// Default routes as (output ifindex, gateway), IPv4 and IPv6.
    pub fn default_routes(&self) -> Result<Vec<(u32, IpAddr)>> {
        use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let mut out = Vec::new();
            for msg in [
                RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
                RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            ] {
                let mut s = h.route().get(msg).execute();
                while let Some(m) = s.try_next().await.map_err(|e| NlError::new("listing routes", e))? {
                    if m.header.destination_prefix_length != 0 {
                        continue;
                    }
                    let (mut oif, mut gw) = (0, None);
                    for a in &m.attributes {
                        match a {
                            RouteAttribute::Oif(i) => oif = *i,
                            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(IpAddr::V4(*g)),
                            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gw = Some(IpAddr::V6(*g)),
                            _ => {}
                        }
                    }
                    if let Some(g) = gw {
                        out.push((oif, g));
                    }
                }
            }
            Ok(out)
        })
    }

    /// The cls_bpf filters on interface `index` at clsact ingress (or egress) as
    /// (priority, handle, program id): what `tc filter show dev X ingress` lists, without
    /// starting `tc`.
    pub fn bpf_filters(&self, index: u32, egress: bool) -> Result<Vec<(u16, u32, u32)>> {
        use rtnetlink::packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let req = h.traffic_filter(index as i32).get();
            let req = if egress { req.egress() } else { req.ingress() };
            let mut s = req.execute();
            let mut out = Vec::new();
            loop {
                let m = match s.try_next().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    // No clsact qdisc (or no interface): no filters.
                    Err(rtnetlink::Error::NetlinkError(e))
                        if matches!(e.to_io().raw_os_error(), Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)) =>
                    {
                        break
                    }
                    Err(e) => return Err(NlError::new("listing tc filters", e)),
                };
                let is_bpf = m.attributes.iter().any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"));
                let prog = m.attributes.iter().find_map(|a| match a {
                    TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
                        TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
                        _ => None,
                    }),
                    _ => None,
                });
                if let (true, Some(id)) = (is_bpf, prog) {
                    let handle = (u32::from(m.header.handle.major) << 16) | u32::from(m.header.handle.minor);
                    out.push(((m.header.info >> 16) as u16, handle, id));
                }
            }
            Ok(out)
        })
    }
}
