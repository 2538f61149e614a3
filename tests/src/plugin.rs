//! A `dataplane` server process (the Docker plugin, the metrics endpoint) started under
//! limits, and raw HTTP/1.1 exchanges with it, for tests at the protocol level.

use std::{
    io::{Read, Write},
    os::unix::{net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::lab::{unique, Host};

/// A server process of ours, stopped (SIGTERM, then reaped) on drop.
pub struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    /// `dataplane ARGS` in `h` with at most `nofile` descriptors, idle connections closed
    /// after `idle_ms`.
    pub fn start(h: &Host, args: &[&str], nofile: u64, idle_ms: u64) -> Server {
        Server::start_env(h, args, nofile, idle_ms, &[])
    }

    /// [`Server::start`] with extra environment (e.g. `DATAPLANE_FAULT`).
    pub fn start_env(h: &Host, args: &[&str], nofile: u64, idle_ms: u64, env: &[(&str, &str)]) -> Server {
        let log = std::env::temp_dir().join(unique("dphttp-log-"));
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut cmd = h.command();
        cmd.args(args)
            .envs(env.iter().copied())
            .env("DATAPLANE_HTTP_IDLE_MS", idle_ms.to_string())
            .stdout(Stdio::null())
            .stderr(f);
        // SAFETY: setrlimit(2) between fork and exec, no allocation.
        unsafe {
            cmd.pre_exec(move || {
                let l = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Server { child: cmd.spawn().unwrap(), log }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// User + system CPU time so far.
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime), counted from the state field (3).
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our child, then reap it.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Send `req` on a new connection and read until the server closes it or 5 s pass.
pub fn exchange(sock: &Path, req: &[u8]) -> String {
    let mut c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(req).unwrap();
    read_answer(&mut c)
}

/// Everything up to the end of the first answer's body (or the close, or 5 s).
pub fn read_answer(c: &mut impl Read) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok());
            if len.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn post(method: &str, body: &str) -> Vec<u8> {
    format!("POST /{method} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `dataplane plugin docker` on a socket of its own in a temporary dir (removed on drop).
pub struct Plugin {
    pub server: Option<Server>,
    pub dir: PathBuf,
    pub socket: PathBuf,
}

impl Plugin {
    pub fn start(h: &Host, env: &[(&str, &str)]) -> Plugin {
        let dir = std::env::temp_dir().join(unique("dpplugin-"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("dataplane.sock");
        let mut p = Plugin { server: None, dir, socket };
        p.restart(h, env);
        p
    }

    /// Start the plugin again (after it died) and wait until its socket answers.
    pub fn restart(&mut self, h: &Host, env: &[(&str, &str)]) {
        self.server = None;
        let s =
            Server::start_env(h, &["plugin", "docker", "--socket", self.socket.to_str().unwrap()], 4096, 60_000, env);
        wait_for("the plugin's socket", Duration::from_secs(20), || UnixStream::connect(&self.socket).is_ok());
        self.server = Some(s);
    }

    /// POST `method` with `body`; the whole answer as text ("" if the plugin died).
    pub fn call(&self, method: &str, body: &str) -> String {
        let Ok(mut c) = UnixStream::connect(&self.socket) else { return String::new() };
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        if c.write_all(&post(method, body)).is_err() {
            return String::new();
        }
        read_answer(&mut c)
    }

    /// Wait until the plugin process has exited (a fault point aborted it).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let s = self.server.as_mut().expect("started");
        let start = Instant::now();
        loop {
            if let Some(st) = s.child.try_wait().unwrap() {
                return st;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "the plugin did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.server.as_ref().map(Server::log).unwrap_or_default()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.server = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A directory of the test's own, removed on drop (also when the test fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let d = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run `f` on a thread inside `h`'s network namespace (TCP sockets opened there stay there).
pub fn in_ns<T: Send>(h: &Host, f: impl FnOnce() -> T + Send) -> T {
    let path = h.ns.path();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns(2) of this thread into a namespace file we hold open.
            assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) }, 0);
            f()
        })
        .join()
        .unwrap()
    })
}

/// GET `path` from `addr` inside `h`; the whole answer ("connect: ..." if refused).
pub fn http_get(h: &Host, addr: &str, path: &str) -> String {
    in_ns(h, || match std::net::TcpStream::connect(addr) {
        Ok(mut c) => {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
            read_answer(&mut c)
        }
        Err(e) => format!("connect: {e}"),
    })
}
