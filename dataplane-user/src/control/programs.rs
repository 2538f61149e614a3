//! The program-level operations of `dataplane bpf` (attach a parent program by hand, edit
//! the admission map, upgrade programs in place, list attachments), for a bpffs dir with
//! or without a store: the one way a front end reaches the programs.

use dataplane_common::{AdmitKey, AdmitValue};

use super::Result;
use crate::bpf::{self, parent::LinkStatus, AttachMode, Pins};

pub use crate::bpf::{
    object::{parse_log_level, set_log_level},
    parent::Attachment as ParentAttachment,
    pins::netns_label,
    reload::ReloadReport,
};

/// Attach (or replace in place) the admission program on `iface` in `netns`.
pub fn load(pins: &Pins, netns: Option<&str>, iface: &str, mode: AttachMode) -> Result<ParentAttachment> {
    Ok(bpf::attach_parent(pins, netns, iface, mode)?)
}

pub fn unload(pins: &Pins, netns: Option<&str>, iface: &str) -> Result<()> {
    bpf::detach_parent(pins, netns, iface)?;
    super::background::forget_gone_instance(pins);
    Ok(())
}

/// Every attached program replaced by this binary's version, maps migrated; after any
/// background upgrade of endpoint hooks has finished.
pub fn reload(pins: &Pins) -> Result<ReloadReport> {
    super::background::wait_all(pins);
    Ok(bpf::reload::upgrade(pins)?)
}

/// Every attachment as the kernel reports it, once background upgrades have finished.
pub fn status(pins: &Pins) -> Vec<LinkStatus> {
    super::background::wait_all(pins);
    bpf::list_attachments(pins)
}

/// Every attachment as it is now (no waiting).
pub fn attachments(pins: &Pins) -> Vec<LinkStatus> {
    bpf::list_attachments(pins)
}

pub fn admit(pins: &Pins, key: AdmitKey, value: AdmitValue) -> Result<()> {
    Ok(bpf::admit::insert(pins, key, value)?)
}

/// Whether the entry was there.
pub fn unadmit(pins: &Pins, key: &AdmitKey) -> Result<bool> {
    Ok(bpf::admit::remove(pins, key)?)
}

pub fn admitted(pins: &Pins) -> Result<Vec<(AdmitKey, AdmitValue)>> {
    Ok(bpf::admit::list(pins)?)
}
