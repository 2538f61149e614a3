//! The admission map: which (parent, VLAN, MAC) may receive unicast frames.

use std::path::Path;

use aya::maps::{HashMap, MapData};
use dataplane_common::{
    maps::{ADMIT_MAP, CONFLICTS_MAP, OUR_IP6S_MAP, OUR_IPS_MAP},
    AdmitKey, AdmitValue, Conflict, Ip6Key, IpKey, OurIp,
};

use super::{object::BpfError, pins::Pins};

fn map_err(path: &Path, source: impl Into<super::object::Cause>) -> BpfError {
    BpfError::Map { path: path.to_path_buf(), source: source.into() }
}

pub fn open(pins: &Pins) -> Result<HashMap<MapData, AdmitKey, AdmitValue>, BpfError> {
    super::open_hash(pins, ADMIT_MAP)
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

/// A pinned hash map of this instance, if its programs have it (the address and conflict
/// maps are pinned by programs loaded since they were added; older pins simply lack them).
fn open_pinned<K: aya::Pod, V: aya::Pod>(pins: &Pins, name: &str) -> Option<HashMap<MapData, K, V>> {
    super::open_hash(pins, name).ok()
}

/// Record that the addresses keyed by `keys` (`IpKey`s in DP_OUR_IPS, `Ip6Key`s in
/// DP_OUR_IP6S) are `value.endpoint`'s, with its MAC.
fn claim<K: aya::Pod>(pins: &Pins, map: &str, keys: &[K], value: OurIp) -> Result<(), BpfError> {
    let Some(mut m) = open_pinned::<K, OurIp>(pins, map) else { return Ok(()) };
    for k in keys {
        m.insert(*k, value, 0).map_err(|e| map_err(&pins.map(map), e))?;
    }
    Ok(())
}

/// Forget the addresses keyed by `keys` where they are still `endpoint`'s.
fn release<K: aya::Pod>(pins: &Pins, map: &str, keys: &[K], endpoint: u32) {
    let Some(mut m) = open_pinned::<K, OurIp>(pins, map) else { return };
    for k in keys {
        if m.get(k, 0).is_ok_and(|v| v.endpoint == endpoint) {
            let _ = m.remove(k);
        }
    }
}

pub fn claim_ips(pins: &Pins, keys: &[IpKey], value: OurIp) -> Result<(), BpfError> {
    claim(pins, OUR_IPS_MAP, keys, value)
}

pub fn release_ips(pins: &Pins, keys: &[IpKey], endpoint: u32) {
    release(pins, OUR_IPS_MAP, keys, endpoint)
}

pub fn claim_ip6s(pins: &Pins, keys: &[Ip6Key], value: OurIp) -> Result<(), BpfError> {
    claim(pins, OUR_IP6S_MAP, keys, value)
}

pub fn release_ip6s(pins: &Pins, keys: &[Ip6Key], endpoint: u32) {
    release(pins, OUR_IP6S_MAP, keys, endpoint)
}

/// Every address claim in map `map` (none if the map is not there).
fn claims<K: aya::Pod>(pins: &Pins, map: &str) -> Vec<(K, OurIp)> {
    let Some(m) = open_pinned::<K, OurIp>(pins, map) else { return Vec::new() };
    m.iter().filter_map(Result::ok).collect()
}

/// Drop the claim on `key` in map `map`.
fn unclaim<K: aya::Pod>(pins: &Pins, map: &str, key: &K) {
    if let Some(mut m) = open_pinned::<K, OurIp>(pins, map) {
        let _ = m.remove(key);
    }
}

pub fn claimed_ips(pins: &Pins) -> Vec<(IpKey, OurIp)> {
    claims(pins, OUR_IPS_MAP)
}

pub fn claimed_ip6s(pins: &Pins) -> Vec<(Ip6Key, OurIp)> {
    claims(pins, OUR_IP6S_MAP)
}

pub fn unclaim_ip(pins: &Pins, key: &IpKey) {
    unclaim(pins, OUR_IPS_MAP, key)
}

pub fn unclaim_ip6(pins: &Pins, key: &Ip6Key) {
    unclaim(pins, OUR_IP6S_MAP, key)
}

/// Conflicts the parents' XDP programs noticed, by endpoint number.
pub fn conflicts(pins: &Pins) -> std::collections::BTreeMap<u32, Conflict> {
    let Some(m) = open_pinned::<u32, Conflict>(pins, CONFLICTS_MAP) else { return Default::default() };
    m.iter().filter_map(Result::ok).collect()
}

/// Forget endpoint `endpoint`'s conflict record (it is gone).
pub fn clear_conflicts(pins: &Pins, endpoint: u32) {
    if let Some(mut m) = open_pinned::<u32, Conflict>(pins, CONFLICTS_MAP) {
        let _ = m.remove(&endpoint);
    }
}
