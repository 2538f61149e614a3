//! Finding and deleting an endpoint's interface wherever it is now (here, or in the
//! container Docker moved it into), now or through the deletion child.

use crate::nl::Nl;

/// As [`delete_host_link`], by a forked child (as CNI DEL does; see background.rs) that
/// then removes `unpin`; here if no child could be made. Returns whether a child took it
/// (and `unpin` with it).
pub(crate) fn delete_host_link_later(
    ifindex: u32,
    sandbox: Option<&str>,
    unpin: &[std::path::PathBuf],
) -> std::result::Result<bool, String> {
    let Some((nl, path, l)) = locate_host_link(ifindex, sandbox)? else { return Ok(false) };
    let name = l.name;
    if super::background::spawn_unlink(&path, &[(name.clone(), ifindex)], unpin).is_ok() {
        return Ok(true);
    }
    nl.del_link(ifindex).map_err(|e| format!("deleting {name}: {e}"))?;
    Ok(false)
}

/// The namespace path [`locate_host_link`] gives for this one.
pub(crate) const HERE: &str = "/proc/thread-self/ns/net";

/// Where the interface with `ifindex` is: this namespace, or the container's if Docker
/// left it there. Its namespace's netlink handle and path, and the interface.
pub(crate) fn locate_host_link(
    ifindex: u32,
    sandbox: Option<&str>,
) -> std::result::Result<Option<(Nl, String, crate::nl::LinkInfo)>, String> {
    let mut nls = vec![(Nl::here().map_err(|e| e.to_string())?, HERE.to_string())];
    if let Some(s) = sandbox.filter(|s| std::path::Path::new(s).exists()) {
        if let Ok(nl) = Nl::in_netns(std::path::Path::new(s)) {
            nls.push((nl, s.to_string()));
        }
    }
    for (nl, path) in nls {
        if let Some(l) = nl.links().map_err(|e| e.to_string())?.into_iter().find(|l| l.index == ifindex) {
            return Ok(Some((nl, path, l)));
        }
    }
    Ok(None)
}
