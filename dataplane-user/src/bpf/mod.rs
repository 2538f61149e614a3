//! The kernel side, seen from user space: the embedded object, the pin layout, attaching
//! programs through pinned links, and the maps.

pub mod admit;
pub mod counters;
pub mod object;
pub mod parent;
pub mod pins;
pub mod tc;
pub mod vlan_maps;

pub use object::{load_object, BpfError};
pub use parent::{attach_parent, detach_parent, list_attachments, AttachMode, Attachment};
pub use pins::Pins;
