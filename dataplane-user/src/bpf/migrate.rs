//! Pinned maps whose layout changed between builds (type, key or value size, capacity):
//! before new programs are swapped in, each such map is re-created with the new layout
//! and its entries are copied over, so an upgrade keeps every allocation.
//!
//! Copying is byte-wise: keys must keep their size (a key is an identity), values may
//! grow (new trailing fields start zeroed) or shrink (trailing fields are dropped), which
//! is the append-only rule the map types in dataplane-common follow.

use std::{
    os::fd::{AsFd, AsRawFd, RawFd},
    path::PathBuf,
};

use aya::maps::{MapData, MapInfo};
use dataplane_common::{
    maps::{ADMIT_EMPTY, ADMIT_MAP, ADMIT_TOMBSTONE},
    AdmitKey,
};

use super::{
    object::{load_object, BpfError},
    pins::Pins,
};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Migrated {
    pub map: String,
    pub from: String,
    pub to: String,
    pub entries: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "type {} key {} value {} entries {}", self.map_type, self.key_size, self.value_size, self.max_entries)
    }
}

fn layout(info: &MapInfo) -> Layout {
    Layout {
        map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    }
}

fn is_percpu(map_type: u32) -> bool {
    use aya::maps::MapType::*;
    [PerCpuHash as u32, PerCpuArray as u32, LruPerCpuHash as u32].contains(&map_type)
}

/// bpf(2) for map element commands (the kernel's union bpf_attr, elem variant).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf_elem(cmd: libc::c_long, fd: RawFd, key: *const u8, value: *mut u8, flags: u64) -> std::io::Result<()> {
    let attr = ElemAttr { map_fd: fd as u32, _pad: 0, key: key as u64, value: value as u64, flags };
    let mut attr = attr;
    // SAFETY: attr is a valid bpf_attr prefix for the map element commands; the buffers
    // are sized by the caller to the map's key and value sizes.
    unsafe {
        crate::sys::bpf(cmd, (&mut attr as *mut ElemAttr).cast(), std::mem::size_of::<ElemAttr>())?;
    }
    Ok(())
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

fn ncpus() -> usize {
    aya::util::nr_cpus().unwrap_or(1)
}

/// Call `f` with every (key, value) of `old` (per-CPU values: one slot per CPU, `slot`
/// bytes each); returns how many there were.
fn each_entry(
    old: RawFd,
    lo: Layout,
    value_bytes: usize,
    mut f: impl FnMut(&[u8], &[u8]) -> std::io::Result<()>,
) -> std::io::Result<usize> {
    let mut key = vec![0u8; lo.key_size as usize];
    let mut next = vec![0u8; lo.key_size as usize];
    let mut value = vec![0u8; value_bytes];
    let mut seen = 0;
    let mut first = true;
    loop {
        let prev = if first { std::ptr::null() } else { key.as_ptr() };
        match bpf_elem(BPF_MAP_GET_NEXT_KEY, old, prev, next.as_mut_ptr(), 0) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(seen),
            Err(e) => return Err(e),
        }
        first = false;
        key.copy_from_slice(&next);
        if bpf_elem(BPF_MAP_LOOKUP_ELEM, old, key.as_ptr(), value.as_mut_ptr(), 0).is_err() {
            continue; // removed meanwhile
        }
        f(&key, &value)?;
        seen += 1;
    }
}

/// Copy every entry of `old` into `new` (byte-wise, values resized).
fn copy_entries(old: RawFd, lo: Layout, new: RawFd, ln: Layout) -> std::io::Result<usize> {
    let per_cpu = is_percpu(lo.map_type) && is_percpu(ln.map_type);
    let cpus = if per_cpu { ncpus() } else { 1 };
    // Per-CPU values come as one 8-byte aligned slot per possible CPU.
    let slot = |v: u32| if per_cpu { (v as usize).div_ceil(8) * 8 } else { v as usize };
    let (so, sn) = (slot(lo.value_size), slot(ln.value_size));
    let mut copied = 0;
    each_entry(old, lo, so * cpus, |key, vo| {
        let mut vn = vec![0u8; sn * cpus];
        for c in 0..cpus {
            let n = so.min(sn).min(lo.value_size as usize).min(ln.value_size as usize);
            vn[c * sn..c * sn + n].copy_from_slice(&vo[c * so..c * so + n]);
        }
        // Arrays hold every index; skip all-zero values so nothing is written needlessly.
        if vn.iter().all(|b| *b == 0) && lo.map_type == aya::maps::MapType::PerCpuArray as u32 {
            return Ok(());
        }
        bpf_elem(BPF_MAP_UPDATE_ELEM, new, key.as_ptr(), vn.as_mut_ptr(), 0)?;
        copied += 1;
        Ok(())
    })?;
    Ok(copied)
}

/// An earlier version's admission map into this version's table, key by key: a BPF hash
/// of 12-byte keys (up to this table's introduction), or a table of another size (whose
/// slots a key's hash placed by that size, so they cannot be copied index by index).
fn convert_admission(old: RawFd, lo: Layout, pins: &Pins) -> Result<usize, String> {
    let parse = |k: &[u8], endpoint: &[u8]| {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&k[6..12]);
        let key = AdmitKey {
            ifindex: u32::from_ne_bytes([k[0], k[1], k[2], k[3]]),
            vlan: u16::from_ne_bytes([k[4], k[5]]),
            mac,
        };
        (key, u32::from_ne_bytes([endpoint[0], endpoint[1], endpoint[2], endpoint[3]]))
    };
    let slot_size = std::mem::size_of::<dataplane_common::AdmitSlot>();
    let table = super::admit::open(pins).map_err(|e| e.to_string())?;
    let locked = table.lock(pins).map_err(|e| e.to_string())?;
    let put = |key: AdmitKey, endpoint: u32| locked.put(key, endpoint, true).map(|_| ()).map_err(std::io::Error::other);
    let mut carried = 0;
    let walked = if lo.map_type == aya::maps::MapType::Hash as u32
        && lo.key_size as usize == std::mem::size_of::<AdmitKey>()
        && lo.value_size >= 4
    {
        each_entry(old, lo, lo.value_size as usize, |k, v| {
            let (key, endpoint) = parse(k, v);
            carried += 1;
            put(key, endpoint)
        })
    } else if lo.map_type == aya::maps::MapType::Array as u32 && lo.value_size as usize == slot_size {
        // Slots first, then the occupancy bitmap (1 bit per slot): slots = entries * 128 / 129.
        let slots = (u64::from(lo.max_entries) * 128 / 129) as u32;
        each_entry(old, lo, slot_size, |k, v| {
            let index = u32::from_ne_bytes([k[0], k[1], k[2], k[3]]);
            let (key, endpoint) = parse(&v[..12], &v[12..16]);
            if index >= slots || key.ifindex == ADMIT_EMPTY || key.ifindex == ADMIT_TOMBSTONE {
                return Ok(());
            }
            carried += 1;
            put(key, endpoint)
        })
    } else {
        return Err(format!("an admission map with layout {lo} cannot be converted"));
    };
    walked.map_err(|e| format!("carrying entries over: {e}"))?;
    Ok(carried)
}

/// Layouts of the maps this binary's object defines (made in a scratch pin dir).
fn object_layouts(pins: &Pins) -> Result<Vec<(String, Layout)>, BpfError> {
    let scratch = Pins::new(pins.root().with_file_name(format!(
        "{}_layout_probe_{}",
        pins.root().file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    )));
    let ebpf = load_object(&scratch.maps_dir());
    let result = ebpf.map(|e| {
        e.maps()
            .filter_map(|(name, m)| {
                let data = match m {
                    aya::maps::Map::HashMap(d)
                    | aya::maps::Map::PerCpuHashMap(d)
                    | aya::maps::Map::Array(d)
                    | aya::maps::Map::PerCpuArray(d) => d,
                    _ => return None,
                };
                data.info().ok().map(|i| (name.to_string(), layout(&i)))
            })
            .collect::<Vec<_>>()
    });
    let _ = std::fs::remove_dir_all(scratch.root());
    result
}

/// Re-create every pinned map whose layout differs from this build's, copying entries.
/// Returns what was migrated. On failure the old map is put back.
pub fn migrate_maps(pins: &Pins) -> Result<Vec<Migrated>, BpfError> {
    if !pins.maps_dir().exists() {
        return Ok(Vec::new());
    }
    let wanted = object_layouts(pins)?;
    let mut out = Vec::new();
    for (name, new_layout) in wanted {
        let pin = pins.map(&name);
        if !pin.exists() {
            continue;
        }
        let err = |d: String| BpfError::Map { path: pin.clone(), source: d.into() };
        let old_info = MapInfo::from_pin(&pin).map_err(|e| err(e.to_string()))?;
        let old_layout = layout(&old_info);
        if old_layout == new_layout {
            continue;
        }
        // The admission table is re-filled key by key (it replaced the hash map of earlier
        // versions; a table of another size hashes keys to other slots).
        let admission = name == ADMIT_MAP;
        if old_layout.key_size != new_layout.key_size && !admission {
            return Err(err(format!(
                "its key changed size ({old_layout} -> {new_layout}): entries cannot be carried over; \
                 remove the networks using it and create them again"
            )));
        }
        let old_data = MapData::from_pin(&pin).map_err(|e| err(e.to_string()))?;
        let aside: PathBuf = pin.with_file_name(format!("{name}_migrating"));
        std::fs::rename(&pin, &aside).map_err(|e| err(format!("moving the old pin aside: {e}")))?;
        // Loading the object now creates (and pins) the map with the new layout.
        let result = (|| -> Result<usize, BpfError> {
            let ebpf = load_object(&pins.maps_dir())?;
            drop(ebpf);
            if admission {
                return convert_admission(old_data.fd().as_fd().as_raw_fd(), old_layout, pins).map_err(err);
            }
            let new_data = MapData::from_pin(&pin).map_err(|e| err(e.to_string()))?;
            copy_entries(old_data.fd().as_fd().as_raw_fd(), old_layout, new_data.fd().as_fd().as_raw_fd(), new_layout)
                .map_err(|e| err(format!("copying entries: {e}")))
        })();
        match result {
            Ok(entries) => {
                let _ = std::fs::remove_file(&aside);
                out.push(Migrated { map: name, from: old_layout.to_string(), to: new_layout.to_string(), entries });
            }
            Err(e) => {
                let _ = std::fs::remove_file(&pin);
                let _ = std::fs::rename(&aside, &pin);
                return Err(e);
            }
        }
    }
    Ok(out)
}
