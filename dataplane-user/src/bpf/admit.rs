//! The admission map: which (parent, VLAN, MAC) may receive unicast frames.

use std::path::Path;

use aya::maps::{HashMap, Map, MapData};
use dataplane_common::{
    maps::{CONFLICTS_MAP, OUR_IP6S_MAP, OUR_IPS_MAP},
    AdmitKey, AdmitValue, Conflict, Ip6Key, IpKey, OurIp,
};

use super::{object::BpfError, pins::Pins};

fn map_err(path: &Path, detail: impl ToString) -> BpfError {
    BpfError::Map { path: path.to_path_buf(), detail: detail.to_string() }
}

pub fn open(pins: &Pins) -> Result<HashMap<MapData, AdmitKey, AdmitValue>, BpfError> {
    let path = pins.admit_map();
    if !path.exists() {
        return Err(BpfError::NoMaps { dir: pins.maps_dir() });
    }
    let data = MapData::from_pin(&path).map_err(|e| map_err(&path, e))?;
    let map = Map::from_map_data(data).map_err(|e| map_err(&path, e))?;
    HashMap::try_from(map).map_err(|e| map_err(&path, e))
}

pub fn insert(pins: &Pins, key: AdmitKey, value: AdmitValue) -> Result<(), BpfError> {
    let mut m = open(pins)?;
    m.insert(key, value, 0).map_err(|e| map_err(&pins.admit_map(), e))
}

/// Insert `key` unless it is present; returns the value already there, if any.
pub fn insert_new(pins: &Pins, key: AdmitKey, value: AdmitValue) -> Result<Option<AdmitValue>, BpfError> {
    let mut m = open(pins)?;
    const BPF_NOEXIST: u64 = 1;
    match m.insert(key, value, BPF_NOEXIST) {
        Ok(()) => Ok(None),
        Err(aya::maps::MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::EEXIST) => {
            Ok(Some(m.get(&key, 0).map_err(|e| map_err(&pins.admit_map(), e))?))
        }
        Err(e) => Err(map_err(&pins.admit_map(), e)),
    }
}

/// Remove `key` if its value satisfies `pred`; returns whether it was removed.
pub fn remove_if(pins: &Pins, key: &AdmitKey, pred: impl Fn(&AdmitValue) -> bool) -> Result<bool, BpfError> {
    let m = open(pins)?;
    match m.get(key, 0) {
        Ok(v) if pred(&v) => remove(pins, key),
        _ => Ok(false),
    }
}

/// Returns whether the key was present.
pub fn remove(pins: &Pins, key: &AdmitKey) -> Result<bool, BpfError> {
    let mut m = open(pins)?;
    match m.remove(key) {
        Ok(()) => Ok(true),
        Err(aya::maps::MapError::KeyNotFound) => Ok(false),
        Err(aya::maps::MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(map_err(&pins.admit_map(), e)),
    }
}

/// Remove every entry whose key matches `pred`, through one open map.
pub fn remove_where(pins: &Pins, pred: impl Fn(&AdmitKey) -> bool) -> Result<(), BpfError> {
    let mut m = open(pins)?;
    let keys: Vec<AdmitKey> = m.keys().filter_map(Result::ok).filter(|k| pred(k)).collect();
    for k in keys {
        match m.remove(&k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(aya::maps::MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(map_err(&pins.admit_map(), e)),
        }
    }
    Ok(())
}

pub fn list(pins: &Pins) -> Result<Vec<(AdmitKey, AdmitValue)>, BpfError> {
    let m = open(pins)?;
    let mut out = Vec::new();
    for item in m.iter() {
        out.push(item.map_err(|e| map_err(&pins.admit_map(), e))?);
    }
    out.sort_by_key(|(k, _)| (k.ifindex, k.vlan, k.mac));
    Ok(out)
}

/// The map of our IPv4 addresses per (parent, VLAN), if this instance's programs have it
/// (pinned by programs loaded since it was added; older pins simply lack it).
fn open_ips(pins: &Pins) -> Option<HashMap<MapData, IpKey, OurIp>> {
    let path = pins.map(OUR_IPS_MAP);
    let data = MapData::from_pin(&path).ok()?;
    HashMap::try_from(Map::from_map_data(data).ok()?).ok()
}

/// Record that the addresses keyed by `keys` are `value.endpoint`'s (with its MAC).
pub fn claim_ips(pins: &Pins, keys: &[IpKey], value: OurIp) -> Result<(), BpfError> {
    let Some(mut m) = open_ips(pins) else { return Ok(()) };
    for k in keys {
        m.insert(*k, value, 0).map_err(|e| map_err(&pins.map(OUR_IPS_MAP), e))?;
    }
    Ok(())
}

/// Forget the addresses keyed by `keys` where they are still `endpoint`'s.
pub fn release_ips(pins: &Pins, keys: &[IpKey], endpoint: u32) {
    let Some(mut m) = open_ips(pins) else { return };
    for k in keys {
        if m.get(k, 0).is_ok_and(|v| v.endpoint == endpoint) {
            let _ = m.remove(k);
        }
    }
}

fn open_ip6s(pins: &Pins) -> Option<HashMap<MapData, Ip6Key, OurIp>> {
    let data = MapData::from_pin(pins.map(OUR_IP6S_MAP)).ok()?;
    HashMap::try_from(Map::from_map_data(data).ok()?).ok()
}

/// [`claim_ips`] for IPv6 addresses.
pub fn claim_ip6s(pins: &Pins, keys: &[Ip6Key], value: OurIp) -> Result<(), BpfError> {
    let Some(mut m) = open_ip6s(pins) else { return Ok(()) };
    for k in keys {
        m.insert(*k, value, 0).map_err(|e| map_err(&pins.map(OUR_IP6S_MAP), e))?;
    }
    Ok(())
}

/// [`release_ips`] for IPv6 addresses.
pub fn release_ip6s(pins: &Pins, keys: &[Ip6Key], endpoint: u32) {
    let Some(mut m) = open_ip6s(pins) else { return };
    for k in keys {
        if m.get(k, 0).is_ok_and(|v| v.endpoint == endpoint) {
            let _ = m.remove(k);
        }
    }
}

fn open_conflicts(pins: &Pins) -> Option<HashMap<MapData, u32, Conflict>> {
    let data = MapData::from_pin(pins.map(CONFLICTS_MAP)).ok()?;
    HashMap::try_from(Map::from_map_data(data).ok()?).ok()
}

/// Conflicts the parents' XDP programs noticed, by endpoint number.
pub fn conflicts(pins: &Pins) -> std::collections::BTreeMap<u32, Conflict> {
    let Some(m) = open_conflicts(pins) else { return Default::default() };
    m.iter().filter_map(Result::ok).collect()
}

/// Forget endpoint `endpoint`'s conflict record (it is gone).
pub fn clear_conflicts(pins: &Pins, endpoint: u32) {
    if let Some(mut m) = open_conflicts(pins) {
        let _ = m.remove(&endpoint);
    }
}
