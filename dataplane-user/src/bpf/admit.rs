//! The admission map: which (parent, VLAN, MAC) may receive unicast frames.

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    sync::atomic::{fence, AtomicU32, AtomicU64, Ordering},
};

use aya::maps::{HashMap, MapData};
use dataplane_common::{
    maps::{
        ADMIT_EMPTY, ADMIT_MAP_ENTRIES, ADMIT_PROBES, ADMIT_SLOTS, ADMIT_TOMBSTONE, CONFLICTS_MAP, OUR_IP6S_MAP,
        OUR_IPS_MAP,
    },
    AdmitKey, AdmitSlot, AdmitValue, Conflict, Ip6Key, IpKey, OurIp,
};

use super::{object::BpfError, pins::Pins};

fn map_err(path: &Path, source: impl Into<super::object::Cause>) -> BpfError {
    BpfError::Map { path: path.to_path_buf(), source: source.into() }
}

const MASK: u32 = ADMIT_SLOTS - 1;

/// The pinned admission table, mapped into this process (see `AdmitSlot` in
/// dataplane-common for the layout and the publication rule). Reads need no lock;
/// changes hold the instance's table lock, so writers never interleave.
///
/// Mapped a page at a time, when first touched: mapping the whole 8 MiB table makes the
/// kernel fill in every page table entry at once (~0.3 ms to map and unmap here), while a
/// command touches a few pages (a key's run of slots, a bitmap word).
pub struct Table {
    map: MapData,
    pages: std::cell::RefCell<std::collections::BTreeMap<usize, usize>>,
}

const PAGE: usize = 4096;

impl Drop for Table {
    fn drop(&mut self) {
        for (_, addr) in self.pages.borrow().iter() {
            // SAFETY: a page this table mapped in `at`, unmapped once.
            unsafe { libc::munmap(*addr as *mut libc::c_void, PAGE) };
        }
    }
}

/// Held while the table is being changed.
pub struct Locked<'t> {
    table: &'t Table,
    _lock: File,
}

impl Table {
    /// Open the table pinned at `pin`; refuses a map of another layout (an earlier
    /// version's hash map, until `dataplane bpf reload` converts it).
    pub fn open_pin(pin: &Path) -> Result<Table, BpfError> {
        let map = MapData::from_pin(pin).map_err(|e| map_err(pin, e))?;
        let info = map.info().map_err(|e| map_err(pin, e))?;
        let (kind, value, entries) =
            (info.map_type().map(|t| t as u32).unwrap_or(u32::MAX), info.value_size(), info.max_entries());
        if kind != aya::maps::MapType::Array as u32
            || value as usize != std::mem::size_of::<AdmitSlot>()
            || entries != ADMIT_MAP_ENTRIES
        {
            return Err(map_err(
                pin,
                format!(
                    "it has an earlier version's layout (map type {kind}, value {value} bytes, {entries} entries); \
                     run `dataplane bpf reload` to swap in this version's programs and carry its entries over"
                ),
            ));
        }
        let t = Table { map, pages: Default::default() };
        // Map one page now, so that a map that cannot be mapped fails here, clearly.
        t.try_at(0).map_err(|e| map_err(pin, format!("mapping it into memory: {e}")))?;
        Ok(t)
    }

    fn try_at(&self, offset: usize) -> std::io::Result<*mut u8> {
        let page = offset / PAGE;
        let mut pages = self.pages.borrow_mut();
        let addr = match pages.get(&page) {
            Some(a) => *a,
            None => {
                // SAFETY: a shared mapping of one page of the map's memory (made
                // BPF_F_MMAPABLE); the kernel checks the offset and the flags.
                let a = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        PAGE,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        self.map.fd().as_fd().as_raw_fd(),
                        (page * PAGE) as libc::off_t,
                    )
                };
                if a == libc::MAP_FAILED {
                    return Err(std::io::Error::last_os_error());
                }
                pages.insert(page, a as usize);
                a as usize
            }
        };
        Ok((addr + offset % PAGE) as *mut u8)
    }

    /// The byte at `offset` of the table's memory, mapped. Slots (16 bytes) and bitmap
    /// words (8) never straddle a page.
    fn at(&self, offset: usize) -> *mut u8 {
        // The first page mapped at open shows mapping works; a later failure is out of
        // address space or memory, which nothing here can go on from.
        self.try_at(offset).expect("mapping a page of the admission table")
    }

    fn slot_ptr(&self, slot: u32) -> *mut AdmitSlot {
        self.at(slot as usize * std::mem::size_of::<AdmitSlot>()).cast()
    }

    fn word(&self, slot: u32) -> &AtomicU32 {
        // SAFETY: a mapped slot; its first word is its ifindex, 8-aligned.
        unsafe { AtomicU32::from_ptr(self.slot_ptr(slot).cast()) }
    }

    fn endpoint_word(&self, slot: u32) -> &AtomicU32 {
        // SAFETY: as `word`; the endpoint is the slot's last four bytes.
        unsafe { AtomicU32::from_ptr(self.slot_ptr(slot).cast::<u32>().add(3)) }
    }

    /// Bitmap word `i` (after the slots).
    fn bitmap(&self, i: usize) -> &AtomicU64 {
        let offset = ADMIT_SLOTS as usize * std::mem::size_of::<AdmitSlot>() + i * 8;
        // SAFETY: i < ADMIT_SLOTS / 64: inside the entries after the slots, 8-aligned.
        unsafe { AtomicU64::from_ptr(self.at(offset).cast()) }
    }

    /// Slot `slot`'s key if it holds an entry (acquire: the rest was written before).
    fn entry(&self, slot: u32) -> Option<(AdmitKey, u32)> {
        let ifindex = self.word(slot).load(Ordering::Acquire);
        if ifindex == ADMIT_EMPTY || ifindex == ADMIT_TOMBSTONE {
            return None;
        }
        // SAFETY: a mapped slot; a plain copy of it.
        let s = unsafe { std::ptr::read_volatile(self.slot_ptr(slot)) };
        Some((AdmitKey { ifindex, ..s.key }, s.endpoint))
    }

    /// Where `key` is, else the first free slot on its path (None if it has none).
    fn find(&self, key: &AdmitKey) -> Result<u32, Option<u32>> {
        let home = key.home_slot();
        let mut free = None;
        for i in 0..ADMIT_PROBES {
            let slot = (home + i) & MASK;
            match self.word(slot).load(Ordering::Acquire) {
                ADMIT_EMPTY => return Err(free.or(Some(slot))),
                ADMIT_TOMBSTONE => free = free.or(Some(slot)),
                _ if self.entry(slot).is_some_and(|(k, _)| k == *key) => return Ok(slot),
                _ => {}
            }
        }
        Err(free)
    }

    pub fn get(&self, key: &AdmitKey) -> Option<AdmitValue> {
        let slot = self.find(key).ok()?;
        Some(AdmitValue { endpoint: self.endpoint_word(slot).load(Ordering::Acquire), flags: 0 })
    }

    /// Every entry with its slot, found through the bitmap (a few dozen KiB read, not
    /// the slots).
    fn occupied(&self) -> Vec<(u32, AdmitKey, u32)> {
        let mut out = Vec::new();
        for i in 0..(ADMIT_SLOTS / 64) as usize {
            let mut bits = self.bitmap(i).load(Ordering::Acquire);
            while bits != 0 {
                let slot = (i * 64) as u32 + bits.trailing_zeros();
                bits &= bits - 1;
                if let Some((k, endpoint)) = self.entry(slot) {
                    out.push((slot, k, endpoint));
                }
            }
        }
        out
    }

    /// Every entry, sorted.
    pub fn entries(&self) -> Vec<(AdmitKey, AdmitValue)> {
        let mut out: Vec<_> =
            self.occupied().into_iter().map(|(_, k, endpoint)| (k, AdmitValue { endpoint, flags: 0 })).collect();
        out.sort_by_key(|(k, _)| (k.ifindex, k.vlan, k.mac));
        out
    }

    /// Take the instance's table lock (a file under /run/dataplane).
    pub fn lock(&self, pins: &Pins) -> Result<Locked<'_>, BpfError> {
        let path = lock_path(pins);
        let err =
            |e: std::io::Error| map_err(&pins.admit_map(), format!("locking the table ({}): {e}", path.display()));
        std::fs::create_dir_all(path.parent().expect("under /run")).map_err(err)?;
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(err)?;
        if !crate::sys::flock(&f, libc::LOCK_EX) {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(Locked { table: self, _lock: f })
    }
}

impl Locked<'_> {
    /// Put `key` in with `endpoint`; `replace` says what to do if it is there. Returns the
    /// value that was there.
    pub(super) fn put(&self, key: AdmitKey, endpoint: u32, replace: bool) -> Result<Option<AdmitValue>, String> {
        let t = self.table;
        match t.find(&key) {
            Ok(slot) => {
                let old = t.endpoint_word(slot).load(Ordering::Acquire);
                if replace {
                    t.endpoint_word(slot).store(endpoint, Ordering::Release);
                }
                Ok(Some(AdmitValue { endpoint: old, flags: 0 }))
            }
            Err(None) => Err(format!(
                "the admission table has no free slot where this key can go (its {ADMIT_PROBES} places are taken; \
                 the table holds {} entries of at most {}): remove endpoints that are no longer used",
                t.occupied().len(),
                dataplane_common::maps::ADMIT_MAX_ENTRIES
            )),
            Err(Some(slot)) => {
                t.bitmap(slot as usize / 64).fetch_or(1 << (slot % 64), Ordering::AcqRel);
                // SAFETY: the slot is free (empty or removed): no reader matches it while
                // its ifindex is not the key's, so the rest may be written plainly first.
                unsafe {
                    let p = t.slot_ptr(slot);
                    std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).key.vlan), key.vlan);
                    std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).key.mac), key.mac);
                }
                t.endpoint_word(slot).store(endpoint, Ordering::Relaxed);
                fence(Ordering::Release);
                t.word(slot).store(key.ifindex, Ordering::Release);
                Ok(None)
            }
        }
    }

    /// Remove the entry in `slot`: a tombstone, or empty slots where nothing lies behind.
    fn take(&self, slot: u32) {
        let t = self.table;
        t.word(slot).store(ADMIT_TOMBSTONE, Ordering::Release);
        t.bitmap(slot as usize / 64).fetch_and(!(1 << (slot % 64)), Ordering::AcqRel);
        // A tombstone followed by an empty slot ends no search early: every key that lies
        // past it would have needed the empty slot to be taken. Empty such runs backwards.
        if t.word((slot + 1) & MASK).load(Ordering::Acquire) != ADMIT_EMPTY {
            return;
        }
        let mut s = slot;
        while t.word(s).load(Ordering::Acquire) == ADMIT_TOMBSTONE {
            t.word(s).store(ADMIT_EMPTY, Ordering::Release);
            s = s.wrapping_sub(1) & MASK;
        }
    }
}

/// The lock file writers of this instance's table take (removed with the instance's pins).
pub fn lock_path(pins: &Pins) -> std::path::PathBuf {
    pins.run_path("admit")
}

pub fn open(pins: &Pins) -> Result<Table, BpfError> {
    if !pins.admit_map().exists() {
        return Err(BpfError::NoMaps { dir: pins.maps_dir() });
    }
    Table::open_pin(&pins.admit_map())
}

fn full(pins: &Pins, key: &AdmitKey, why: String) -> BpfError {
    map_err(
        &pins.admit_map(),
        format!("admitting ifindex {} vlan {} {}: {why}", key.ifindex, key.vlan, crate::mac::Mac(key.mac)),
    )
}

pub fn insert(pins: &Pins, key: AdmitKey, value: AdmitValue) -> Result<(), BpfError> {
    let t = open(pins)?;
    let l = t.lock(pins)?;
    l.put(key, value.endpoint, true).map(|_| ()).map_err(|why| full(pins, &key, why))
}

/// Insert `key` unless it is present; returns the value already there, if any.
pub fn insert_new(pins: &Pins, key: AdmitKey, value: AdmitValue) -> Result<Option<AdmitValue>, BpfError> {
    let t = open(pins)?;
    let l = t.lock(pins)?;
    l.put(key, value.endpoint, false).map_err(|why| full(pins, &key, why))
}

/// Remove `key` if its value satisfies `pred`; returns whether it was removed.
pub fn remove_if(pins: &Pins, key: &AdmitKey, pred: impl Fn(&AdmitValue) -> bool) -> Result<bool, BpfError> {
    let t = open(pins)?;
    if !t.get(key).is_some_and(|v| pred(&v)) {
        return Ok(false);
    }
    let l = t.lock(pins)?;
    match t.find(key) {
        Ok(slot) if pred(&AdmitValue { endpoint: t.endpoint_word(slot).load(Ordering::Acquire), flags: 0 }) => {
            l.take(slot);
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Returns whether the key was present.
pub fn remove(pins: &Pins, key: &AdmitKey) -> Result<bool, BpfError> {
    remove_if(pins, key, |_| true)
}

/// Remove every entry whose key matches `pred`, through one open map.
pub fn remove_where(pins: &Pins, pred: impl Fn(&AdmitKey) -> bool) -> Result<(), BpfError> {
    let t = open(pins)?;
    let l = t.lock(pins)?;
    for (slot, _, _) in t.occupied().into_iter().filter(|(_, k, _)| pred(k)) {
        l.take(slot);
    }
    Ok(())
}

pub fn list(pins: &Pins) -> Result<Vec<(AdmitKey, AdmitValue)>, BpfError> {
    Ok(open(pins)?.entries())
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
    if let Some(all) = super::hash_entries(&pins.map(map)) {
        return all;
    }
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
