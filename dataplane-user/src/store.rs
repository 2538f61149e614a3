//! The state database: an embedded SQLite file under the state dir, in WAL mode, with
//! every mutation in a `BEGIN IMMEDIATE` transaction so concurrent `dataplane` processes
//! serialize on it (busy timeout) instead of corrupting each other.
//!
//! Rows are JSON documents of the model types plus the columns the database must
//! enforce uniqueness on (names, addresses per network, MACs per parent).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state dir {}: {source} (pass --state-dir DIR or set DATAPLANE_STATE_DIR to a writable directory)", dir.display())]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state database {}: {source}", path.display())]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("corrupt row in the state database: {0}")]
    Corrupt(String),
}

pub use crate::model::*;

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// `PRAGMA user_version` of a database that has [`SCHEMA`] and its instance id.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS networks (name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints (name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attachments (
    endpoint TEXT NOT NULL, network TEXT NOT NULL, ipv4 TEXT, ipv6 TEXT, mac TEXT NOT NULL, parent TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (endpoint, network),
    UNIQUE (network, ipv4), UNIQUE (network, ipv6), UNIQUE (parent, mac));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("model types serialize")
}

fn parse<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{e}: {s}")))
}

pub struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
    path: &'a Path,
}

/// The log's size past which a commit checkpoints it and empties it (256 frames of our
/// 4 KiB pages); see [`Store::write`].
const WAL_BYTES: u64 = 256 * (4096 + 24);

impl Store {
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        crate::bpffs::create_private(state_dir).map_err(|e| match e {
            crate::bpffs::BpffsError::Create { dir, source } => StoreError::Dir { dir, source },
            other => StoreError::Dir { dir: state_dir.to_path_buf(), source: std::io::Error::other(other.to_string()) },
        })?;
        let path = state_dir.join("state.db");
        let db = |source| StoreError::Db { path: path.clone(), source };
        let existed = path.exists();
        let conn = Connection::open(&path).map_err(db)?;
        if !existed {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(Duration::from_secs(60)).map_err(db)?;
        // Switching a new database to WAL takes an exclusive lock, and SQLite does not wait
        // for it (no busy handler there): several first commands at once (a node's first
        // pods) take turns here.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Err(e)
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5))
                }
                other => break other.map_err(db)?,
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(db)?;
        // Every command is a process of its own: checkpointing the log at each close (what
        // SQLite does when the last connection goes) would cost every command a write-back
        // and an fsync; the log is checkpointed as it grows instead.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).map_err(db)?;
        // The schema and the instance id, once per database: a database that says it has
        // them (user_version, read from its header) is not written to at open; one made by
        // an earlier version (0) gets them now, its rows and instance kept.
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db)?;
        if version != SCHEMA_VERSION {
            // Immediate: two first opens at once take turns (the busy timeout) instead of
            // one failing on a snapshot the other's commit made stale.
            let tx = rusqlite::Transaction::new_unchecked(&conn, TransactionBehavior::Immediate).map_err(db)?;
            tx.execute_batch(SCHEMA).map_err(db)?;
            tx.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?1)", params![new_id()])
                .map_err(db)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(db)?;
            tx.commit().map_err(db)?;
        }
        Ok(Store { conn, path })
    }

    /// This store's instance id: made once, when the database is created. A bpffs dir is
    /// bound to one instance (see `Engine::open`).
    pub fn instance(&self) -> Result<String, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| r.get(0))
            .map_err(|source| StoreError::Db { path: self.path.clone(), source })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` in an immediate (write-locked) transaction; commit if it returns Ok.
    pub fn write<T, E: From<StoreError>>(&mut self, f: impl FnOnce(&Tx) -> Result<T, E>) -> Result<T, E> {
        let path = self.path.clone();
        let out = {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|source| StoreError::Db { path: path.clone(), source })?;
            let t = Tx { tx, path: &path };
            let out = f(&t)?;
            t.tx.commit().map_err(|source| StoreError::Db { path: path.clone(), source })?;
            out
        };
        self.trim_log();
        Ok(out)
    }

    /// Every command is the only connection when it opens the database, so SQLite rebuilds
    /// the log's index by reading the whole log (recovery) and forgets what earlier
    /// commands checkpointed, so the log never starts over: it grew without end (SQLite's
    /// own checkpoints at 1000 pages do not shrink it), and every command read all of it
    /// at open (store-open 0.5 ms with a fresh log, 2 ms at 900 pages). Past [`WAL_BYTES`]
    /// the committing command checkpoints the log into the database and truncates it,
    /// unless another connection is busy with it (then a later command does it; never a
    /// wait).
    fn trim_log(&self) {
        let mut log = self.path.clone().into_os_string();
        log.push("-wal");
        if std::fs::metadata(&log).map_or(true, |m| m.len() <= WAL_BYTES) {
            return;
        }
        let _ = self.conn.busy_timeout(Duration::ZERO);
        let _ = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        let _ = self.conn.busy_timeout(Duration::from_secs(60));
    }

    /// Read-only snapshot.
    pub fn read<T, E: From<StoreError>>(&mut self, f: impl FnOnce(&Tx) -> Result<T, E>) -> Result<T, E> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(|source| StoreError::Db { path: path.clone(), source })?;
        let t = Tx { tx, path: &path };
        f(&t)
    }
}

impl Tx<'_> {
    fn db(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Db { path: self.path.to_path_buf(), source }
    }

    /// Every document of `table`, in `order`.
    fn all<T: for<'de> Deserialize<'de>>(&self, table: &str, order: &str) -> Result<Vec<T>, StoreError> {
        let mut st = self.tx.prepare(&format!("SELECT doc FROM {table} ORDER BY {order}")).map_err(|e| self.db(e))?;
        let rows = st.query_map([], |r| r.get::<_, String>(0)).map_err(|e| self.db(e))?;
        rows.map(|r| r.map_err(|e| self.db(e)).and_then(|s| parse(&s))).collect()
    }

    /// The document of `table` named `name_or_id`, or whose id is it or starts with it
    /// (12 characters at least, like Docker's short ids). An exact name wins.
    fn one<T: for<'de> Deserialize<'de>>(&self, table: &str, name_or_id: &str) -> Result<Option<T>, StoreError> {
        let doc: Option<String> = self
            .tx
            .query_row(
                &format!(
                    "SELECT doc FROM {table} WHERE name = ?1 OR id = ?1 \
                     OR (length(?1) >= 12 AND substr(id, 1, length(?1)) = ?1) ORDER BY name = ?1 DESC LIMIT 1"
                ),
                [name_or_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db(e))?;
        doc.map(|d| parse(&d)).transpose()
    }

    pub fn networks(&self) -> Result<Vec<Network>, StoreError> {
        self.all("networks", "name")
    }

    pub fn network(&self, name_or_id: &str) -> Result<Option<Network>, StoreError> {
        self.one("networks", name_or_id)
    }

    pub fn put_network(&self, n: &Network) -> Result<(), StoreError> {
        self.tx
            .execute("INSERT INTO networks (name, id, doc) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO UPDATE SET doc = excluded.doc", params![n.name, n.id, json(n)])
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub fn delete_network(&self, name: &str) -> Result<(), StoreError> {
        self.tx.execute("DELETE FROM networks WHERE name = ?1", [name]).map_err(|e| self.db(e))?;
        Ok(())
    }

    pub fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        self.all("endpoints", "name")
    }

    pub fn endpoint(&self, name_or_id: &str) -> Result<Option<Endpoint>, StoreError> {
        self.one("endpoints", name_or_id)
    }

    pub fn put_endpoint(&self, e: &Endpoint) -> Result<(), StoreError> {
        self.tx
            .execute("INSERT INTO endpoints (name, id, doc) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO UPDATE SET doc = excluded.doc", params![e.name, e.id, json(e)])
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub fn delete_endpoint(&self, name: &str) -> Result<(), StoreError> {
        self.tx.execute("DELETE FROM attachments WHERE endpoint = ?1", [name]).map_err(|e| self.db(e))?;
        self.tx.execute("DELETE FROM endpoints WHERE name = ?1", [name]).map_err(|e| self.db(e))?;
        Ok(())
    }

    pub fn attachments(&self) -> Result<Vec<Attachment>, StoreError> {
        self.all("attachments", "network, endpoint")
    }

    pub fn put_attachment(&self, a: &Attachment) -> Result<(), StoreError> {
        self.tx
            .execute(
                "INSERT INTO attachments (endpoint, network, ipv4, ipv6, mac, parent, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT(endpoint, network) DO UPDATE SET ipv4 = excluded.ipv4, ipv6 = excluded.ipv6, mac = excluded.mac, parent = excluded.parent, doc = excluded.doc",
                params![a.endpoint, a.network, a.ipv4.map(|i| i.to_string()), a.ipv6.map(|i| i.to_string()), a.mac.to_string(), a.parent, json(a)],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub fn delete_attachment(&self, endpoint: &str, network: &str) -> Result<(), StoreError> {
        self.tx
            .execute("DELETE FROM attachments WHERE endpoint = ?1 AND network = ?2", [endpoint, network])
            .map_err(|e| self.db(e))?;
        Ok(())
    }
}

/// 64 hex characters from the kernel's random source.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    // SAFETY: getrandom writes at most len bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n, 32, "getrandom failed");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// RFC 3339 UTC timestamp, like Docker's `Created`.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Seconds since the epoch of a time as [`now_rfc3339`] writes it
/// (`2026-12-05T09:00:00.123456789Z`); None for anything else.
pub fn rfc3339_secs(rfc3339: &str) -> Option<i64> {
    let (date, time) = rfc3339.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.trim_end_matches('Z').split(':');
    let (hh, mm) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?);
    let ss = t.next()?.split('.').next()?.parse::<i64>().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn times_read_back_as_they_were_written() {
        assert_eq!(rfc3339_secs("1970-01-01T00:00:00.000000000Z"), Some(0));
        assert_eq!(rfc3339_secs("2026-12-05T09:00:00.5Z"), Some(1_796_461_200));
        assert_eq!(rfc3339_secs("yesterday"), None);
        let now = now_rfc3339();
        assert!((now_secs() - rfc3339_secs(&now).unwrap()).abs() <= 1, "{now}");
    }

    fn tmpdir() -> PathBuf {
        std::env::temp_dir().join(format!("dp-store-{}", new_id()))
    }

    fn network(name: &str, driver: Driver) -> Network {
        Network {
            id: new_id(),
            name: name.into(),
            driver,
            created: now_rfc3339(),
            internal: false,
            ipv6: false,
            options: BTreeMap::new(),
            pools: vec![],
            parent: None,
            macvlan_mode: None,
            vlan: None,
            state: EndpointState::Ready,
            owner_pid: 0,
            owner_start: 0,
            owner: Owner::Cli,
            cluster: false,
            cluster_rev: 0,
        }
    }

    /// A database an earlier version made (no user_version) keeps its rows and instance
    /// id and is marked; a marked one is opened without a write (its log does not grow).
    #[test]
    fn the_schema_is_written_once_per_database() {
        let dir = tmpdir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute("INSERT INTO meta (key, value) VALUES ('instance', 'old-instance')", []).unwrap();
            c.execute("INSERT INTO networks (name, id, doc) VALUES ('kept', 'id-kept', '{}')", []).unwrap();
        }
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.instance().unwrap(), "old-instance");
        let version: i64 = s.conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let kept: i64 =
            s.conn.query_row("SELECT COUNT(*) FROM networks WHERE name = 'kept'", [], |r| r.get(0)).unwrap();
        assert_eq!(kept, 1);
        let log = dir.join("state.db-wal");
        let before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        for _ in 0..3 {
            let again = Store::open(&dir).unwrap();
            assert_eq!(again.instance().unwrap(), "old-instance");
        }
        assert_eq!(std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0), before, "opening wrote to the log");
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn networks_round_trip_and_uniqueness_is_enforced() {
        let dir = tmpdir();
        let mut s = Store::open(&dir).unwrap();
        let n = Network {
            parent: Some("eth1".into()),
            macvlan_mode: Some(MacvlanMode::Bridge),
            ..network("pub_net", Driver::Macvlan)
        };
        s.write(|t| t.put_network(&n)).unwrap();
        let got = s.read(|t| t.network("pub_net")).unwrap().unwrap();
        assert_eq!(got, n);
        assert_eq!(s.read(|t| t.network(&n.id[..12])).unwrap().unwrap().name, "pub_net");
        let a = Attachment {
            endpoint: "e1".into(),
            network: "pub_net".into(),
            ifname: "eth0".into(),
            mac: "02:42:00:00:00:01".parse().unwrap(),
            ipv4: Some("10.0.0.2".parse().unwrap()),
            ipv6: None,
            parent: "eth1".into(),
            ifindex: 0,
            state: EndpointState::Ready,
            owner_pid: 0,
            owner_start: 0,
        };
        s.write(|t| t.put_attachment(&a)).unwrap();
        let mut b = a.clone();
        b.endpoint = "e2".into();
        b.mac = "02:42:00:00:00:02".parse().unwrap();
        let err = s.write(|t| t.put_attachment(&b)).unwrap_err();
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        // A failed transaction leaves nothing behind.
        assert_eq!(s.read(|t| t.attachments()).unwrap().len(), 1);
        let mode = std::fs::metadata(dir.join("state.db")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Commits live in the log between commands (no checkpoint at close): a reopened
    /// store sees them; a database deleted by hand, its log left behind, starts empty.
    #[test]
    fn commits_survive_closing_and_a_deleted_database_starts_empty() {
        let dir = tmpdir();
        let put = |s: &mut Store, name: &str| s.write(|t| t.put_network(&network(name, Driver::None))).unwrap();
        let mut s = Store::open(&dir).unwrap();
        put(&mut s, "kept");
        drop(s);
        assert!(dir.join("state.db-wal").exists(), "the log should stay between commands");
        let mut s = Store::open(&dir).unwrap();
        assert!(s.read(|t| t.network("kept")).unwrap().is_some());
        put(&mut s, "kept-too");
        drop(s);
        std::fs::remove_file(dir.join("state.db")).unwrap();
        let mut s = Store::open(&dir).unwrap();
        assert!(s.read(|t| t.networks()).unwrap().is_empty(), "the old log was replayed into a new database");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The log the next command must read at open stays short: after many commands'
    /// commits it holds no more than the checkpoint limit and one commit's pages.
    #[test]
    fn the_log_stays_short_across_many_commands() {
        let dir = tmpdir();
        for i in 0..300 {
            let mut s = Store::open(&dir).unwrap();
            s.write(|t| t.put_network(&network(&format!("n{i}"), Driver::None))).unwrap();
        }
        let mut s = Store::open(&dir).unwrap();
        // (busy, frames in the log, frames checkpointed); a passive checkpoint with the
        // frames left by the last commits.
        let (_, frames, _): (i64, i64, i64) =
            s.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
        // A frame is a 24-byte header and a 4 KiB page.
        assert!(frames as u64 <= WAL_BYTES / (4096 + 24) + 16, "{frames} pages in the log");
        assert_eq!(s.read(|t| t.networks()).unwrap().len(), 300);
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn timestamps_look_like_docker() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T", "{t}");
    }
}
