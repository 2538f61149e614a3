//! The kernel side, seen from user space: the embedded object, the pin layout, attaching
//! programs through pinned links, and the maps.

pub mod admit;
pub mod counters;
pub mod endpoints;
pub mod migrate;
pub mod object;
pub mod parent;
pub mod pins;
pub mod reload;
pub mod tc;
pub mod vlan_maps;

pub use object::{load_object, BpfError};
pub use parent::{attach_parent, detach_parent, list_attachments, AttachMode, Attachment};
pub use pins::Pins;

/// Create (or reuse) every pinned map without attaching anything.
pub fn ensure_maps(pins: &Pins) -> Result<(), BpfError> {
    load_object(&pins.maps_dir()).map(drop)
}
