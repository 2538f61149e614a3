//! The workers as the engine uses them (see `crate::workers`): one path for both.

pub use crate::workers::{unlink::*, upgrade::*};
