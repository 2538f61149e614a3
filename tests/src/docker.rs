//! A real dockerd in a network namespace of its own, with `dataplane plugin docker`
//! beside it. Everything (containers, networks, the daemon, the plugin, data and exec
//! roots, the plugin socket) is removed on drop, also when a test fails.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::lab::{dataplane_bin, host_with_switch, unique, Host, Netns};

/// The offline image every test container runs: busybox-static, imported once per daemon.
pub const IMAGE: &str = "local/busybox";

pub struct DockerLab {
    pub host: Host,
    pub switch: Netns,
    /// The driver name (`docker network create -d DRIVER`): the plugin socket's base name.
    pub driver: String,
    pub socket: PathBuf,
    root: PathBuf,
    docker_sock: PathBuf,
    dockerd: Option<Child>,
    plugin: Option<Child>,
}

fn kill_and_wait(child: &mut Child, signal: i32, grace: Duration) {
    // SAFETY: plain kill(2) on a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, signal) };
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl DockerLab {
    /// Start the plugin and dockerd inside a fresh host namespace whose `eth0` is wired to
    /// a switch namespace (`up0`). Fails with dockerd's log if it does not come up.
    pub fn new(prefix: &str) -> anyhow::Result<DockerLab> {
        let (host, switch) = host_with_switch(prefix)?;
        let driver = unique("dpdk");
        let root = PathBuf::from("/run").join(unique("dpdocker-"));
        std::fs::create_dir_all(&root)?;
        let mut lab = DockerLab {
            host,
            switch,
            socket: PathBuf::from(format!("/run/docker/plugins/{driver}.sock")),
            driver,
            docker_sock: root.join("docker.sock"),
            root,
            dockerd: None,
            plugin: None,
        };
        lab.start_plugin()?;
        lab.start_dockerd()?;
        lab.import_image()?;
        Ok(lab)
    }

    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.host.ns.path().display()));
        c
    }

    pub fn plugin_log(&self) -> PathBuf {
        self.root.join("plugin.log")
    }

    /// Start (or restart) `dataplane plugin docker` and wait for its socket.
    pub fn start_plugin(&mut self) -> anyhow::Result<()> {
        self.start_plugin_env(&[])
    }

    /// [`DockerLab::start_plugin`] with extra environment (e.g. `DATAPLANE_FAULT`).
    pub fn start_plugin_env(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.plugin_log())?;
        let child = self
            .nsenter()
            .arg(dataplane_bin())
            .arg("--state-dir")
            .arg(&self.host.state)
            .arg("--bpffs")
            .arg(&self.host.bpffs.dir)
            .args(["plugin", "docker", "--verbose", "--socket"])
            .arg(&self.socket)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.plugin = Some(child);
        let start = Instant::now();
        // A crashed predecessor leaves its socket file: wait until one accepts.
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                anyhow::bail!(
                    "the plugin did not create {} within 20 s; its log:\n{}",
                    self.socket.display(),
                    std::fs::read_to_string(self.plugin_log()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kill the plugin with `signal` (SIGKILL: as if it crashed) and wait for it.
    pub fn stop_plugin(&mut self, signal: i32) {
        if let Some(mut c) = self.plugin.take() {
            kill_and_wait(&mut c, signal, Duration::from_secs(10));
        }
    }

    /// Stop dockerd (SIGTERM, as systemd does) and wait for it.
    pub fn stop_dockerd(&mut self) {
        if let Some(mut d) = self.dockerd.take() {
            kill_and_wait(&mut d, libc::SIGTERM, Duration::from_secs(30));
        }
    }

    pub fn start_dockerd(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.root.join("dockerd.log"))?;
        let dockerd = ["/usr/sbin/dockerd", "/usr/bin/dockerd"].into_iter().find(|p| std::path::Path::new(p).exists());
        let Some(dockerd) = dockerd else {
            anyhow::bail!("dockerd is not installed (apt-get install docker.io; .ci/run installs it)");
        };
        let child = self
            .nsenter()
            .arg(dockerd)
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false"])
            .args(["--storage-driver=overlay2", "--data-root"])
            .arg(self.root.join("data"))
            .arg("--exec-root")
            .arg(self.root.join("exec"))
            .arg("--pidfile")
            .arg(self.root.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.docker_sock.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.dockerd = Some(child);
        let start = Instant::now();
        loop {
            if self.docker(&["version", "--format", "{{.Server.Version}}"]).status.success() {
                return Ok(());
            }
            let exited = self.dockerd.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > Duration::from_secs(60) {
                anyhow::bail!(
                    "dockerd did not start ({}); its log:\n{}",
                    exited.map_or("timeout after 60 s".to_string(), |s| s.to_string()),
                    std::fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Build busybox-static into an image without a registry.
    fn import_image(&self) -> anyhow::Result<()> {
        let tar = busybox_tar(&self.root)?;
        let out = self.docker(&["import", "--change", "ENV PATH=/bin", tar.to_str().unwrap_or_default(), IMAGE]);
        anyhow::ensure!(out.status.success(), "docker import failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// `docker ARGS` against this lab's daemon (whatever the exit code).
    pub fn docker(&self, args: &[&str]) -> Output {
        // Debian's client matches its dockerd (API 1.41); a newer client on PATH refuses
        // some flags against it (e.g. --mac-address needs 1.44 there).
        let client = if std::path::Path::new("/usr/bin/docker").exists() { "/usr/bin/docker" } else { "docker" };
        Command::new(client)
            .env("DOCKER_HOST", format!("unix://{}", self.docker_sock.display()))
            .args(args)
            .output()
            .expect("spawn docker")
    }

    /// Like [`DockerLab::docker`], panicking with both streams (and the plugin's log)
    /// unless it succeeds; returns trimmed stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}):\n{}\n{}\nplugin log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.plugin_log()).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// A root filesystem of busybox-static with relative applet links, as `DIR/busybox.tar`
/// (what `docker import` and `podman import` take).
pub fn busybox_tar(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| std::path::Path::new(p).exists());
    let Some(busybox) = busybox else {
        anyhow::bail!("busybox is not installed (apt-get install busybox-static; cargo xtask test installs it)");
    };
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
    let list = Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
    }
    let tar = dir.join("busybox.tar");
    let st = Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").status()?;
    anyhow::ensure!(st.success(), "tar of the busybox rootfs failed");
    Ok(tar)
}

impl Drop for DockerLab {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
            let nets = self.docker(&["network", "ls", "-q", "--filter", &format!("driver={}", self.driver)]);
            for id in String::from_utf8_lossy(&nets.stdout).split_whitespace() {
                let _ = self.docker(&["network", "rm", id]);
            }
        }
        self.stop_dockerd();
        self.stop_plugin(libc::SIGTERM);
        let _ = std::fs::remove_file(&self.socket);
        // dockerd unmounts its overlays on the way out; anything still mounted is detached.
        let _ = Command::new("umount").arg("-R").arg("-l").arg(self.root.join("data")).output();
        let _ = Command::new("umount").arg("-R").arg("-l").arg(self.root.join("exec")).output();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
