//! Distro kernels under qemu: `cargo xtask test --kernel debian-6.1|debian-6.12|debian-5.10`.
//!
//! The kernel package is resolved from Debian's archive at run time (the ABI package the
//! meta package depends on today), downloaded once and unpacked (never installed) into a
//! cache. Each test binary then runs inside a VM booting that kernel, with this machine's
//! root filesystem shared read-only over 9p under a tmpfs overlay and the workspace shared
//! read-write at its own path, so the host-built binaries run unchanged. There is no usable
//! KVM on the build machines: qemu runs under TCG. The exit status comes back through a
//! file on a 9p share.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::run_cmd;

/// Known kernels: (name for --kernel, meta package that depends on the current ABI package,
/// the Debian suite it comes from when it is not the machine's own).
pub const KERNELS: [(&str, &str, Option<&str>); 3] = [
    ("debian-6.1", "linux-image-amd64", None),
    ("debian-6.12", "linux-image-6.12-amd64", None),
    // Debian 11: through an apt source list of our own (never the machine's sources).
    ("debian-5.10", "linux-image-amd64", Some("bullseye")),
];

/// Modules the initramfs loads to reach the host's filesystem.
const BOOT_MODULES: [&str; 4] = ["virtio_pci", "9pnet_virtio", "9p", "overlay"];

fn cache_dir() -> PathBuf {
    std::env::var_os("DATAPLANE_KERNEL_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/dataplane/kernels")
    })
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// apt options that read another suite (`suite`) from a source list and lists of our own,
/// under the cache dir, with the machine's archive mirror and keyring: the machine's own
/// sources and lists are never touched.
fn private_apt(suite: &str) -> Result<Vec<String>> {
    let dir = cache_dir().join(format!("apt-{suite}"));
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let list = dir.join("sources.list");
    if !list.exists() {
        let uri = machine_mirror().context("no Debian mirror found in /etc/apt/sources.list(.d) to fetch from")?;
        std::fs::write(
            &list,
            format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {uri} {suite} main\n"),
        )?;
    }
    let o = |k: &str, v: &Path| vec!["-o".to_string(), format!("{k}={}", v.display())];
    let mut opts = o("Dir::Etc::SourceList", &list);
    opts.extend(o("Dir::Etc::SourceParts", Path::new("/dev/null")));
    opts.extend(o("Dir::State::Lists", &dir.join("lists")));
    opts.extend(o("Dir::Cache", &dir.join("cache")));
    // Our cache dir is root's: apt's unprivileged fetcher could not write there.
    opts.extend(["-o".to_string(), "APT::Sandbox::User=root".to_string()]);
    if !dir.join("lists").read_dir()?.flatten().any(|e| e.file_name().to_string_lossy().contains("_Packages")) {
        eprintln!("[kernel] reading Debian {suite}'s package lists (once; kept in {})", dir.display());
        run_cmd(Command::new("apt-get").args(&opts).args(["update", "-qq"]))?;
    }
    Ok(opts)
}

/// The URI the machine's apt fetches Debian's main archive from.
fn machine_mirror() -> Option<String> {
    let mut texts = vec![std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(d) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in d.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".sources") || name.ends_with(".list") {
                texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    for t in &texts {
        // deb822: a stanza whose URIs serve the main suites (not -security).
        for stanza in t.split("\n\n") {
            let field = |k: &str| stanza.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
            if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) {
                if suites.split_whitespace().any(|s| !s.contains('-')) {
                    return uris.split_whitespace().next().map(str::to_string);
                }
            }
        }
        // One-line format: deb [opts] URI SUITE COMPONENTS...
        for l in t.lines().filter(|l| l.trim_start().starts_with("deb ")) {
            let words: Vec<&str> = l.split_whitespace().filter(|w| !w.starts_with('[') && !w.ends_with(']')).collect();
            if words.len() >= 3 && !words[2].contains('-') {
                return Some(words[1].to_string());
            }
        }
    }
    None
}

/// The ABI package a meta package depends on, e.g. linux-image-6.1.0-56-amd64.
fn resolve(meta: &str, apt: &[String]) -> Result<String> {
    let find = || -> Option<String> {
        let deps = output(Command::new("apt-cache").args(apt).args(["depends", meta])).ok()?;
        deps.lines()
            .find_map(|l| l.trim().strip_prefix("Depends: ").map(str::to_string))
            .filter(|p| p.starts_with("linux-image-"))
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    eprintln!("[kernel] {meta} unknown to apt: running apt-get update");
    run_cmd(Command::new("apt-get").args(apt).args(["update", "-qq"]))?;
    find().with_context(|| {
        format!("apt-cache depends {meta} names no linux-image package (is bookworm-security in the sources?)")
    })
}

/// A kernel unpacked in the cache, with everything a VM boot needs.
pub struct Kernel {
    pub name: String,
    pub root: PathBuf,
    pub version: String,
    pub image: PathBuf,
    pub initrd: PathBuf,
}

/// Resolve, download (once), unpack and prepare `name`.
pub fn prepare(name: &str) -> Result<Kernel> {
    let Some((_, meta, suite)) = KERNELS.iter().find(|(n, _, _)| *n == name) else {
        bail!(
            "unknown kernel {name:?}: use one of {}",
            KERNELS.iter().map(|(n, _, _)| *n).collect::<Vec<_>>().join(", ")
        );
    };
    crate::packages::ensure(&[QEMU_PACKAGES])?;
    let apt = match suite {
        Some(s) => private_apt(s)?,
        None => Vec::new(),
    };
    let pkg = resolve(meta, &apt)?;
    let root = cache_dir().join(&pkg);
    if !root.join("boot").is_dir() {
        eprintln!("[kernel] downloading {pkg} (once; cached in {})", cache_dir().display());
        let tmp = cache_dir().join(format!("{pkg}.download"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        run_cmd(Command::new("apt-get").current_dir(&tmp).args(&apt).args(["download", "-q", &pkg]))
            .with_context(|| format!("downloading {pkg} from Debian's archive"))?;
        let deb = std::fs::read_dir(&tmp)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("apt-get download left no .deb")?;
        run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(tmp.join("x")))?;
        std::fs::rename(tmp.join("x"), &root)?;
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let version = std::fs::read_dir(root.join("lib/modules"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("the kernel package has no lib/modules")?;
    if !root.join("lib/modules").join(&version).join("modules.dep").exists() {
        run_cmd(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
    }
    let image = vmlinux(&root, &version)?;
    let initrd = initramfs(&root, &version)?;
    Ok(Kernel { name: name.to_string(), root, version, image, initrd })
}

/// What booting needs on the host (Debian packages, by a command each provides).
pub const QEMU_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("modprobe", "kmod"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
];

/// The uncompressed kernel (booted through its PVH entry, which skips the slow real-mode
/// setup and decompression under TCG); falls back to the vmlinuz.
fn vmlinux(root: &Path, version: &str) -> Result<PathBuf> {
    let out = root.join("vmlinux");
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{version}"));
    if out.exists() {
        return Ok(out);
    }
    let data = std::fs::read(&vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let find = |magic: &[u8]| data.windows(magic.len()).position(|w| w == magic);
    let (tool, at) = match (find(&[0xfd, b'7', b'z', b'X', b'Z', 0]), find(&[0x28, 0xb5, 0x2f, 0xfd])) {
        (Some(o), _) => ("xz", o),
        (None, Some(o)) => ("zstd", o),
        _ => return Ok(vmlinuz),
    };
    let mut child = Command::new(tool)
        .args(if tool == "xz" { &["-dcq", "--single-stream"][..] } else { &["-dcq"][..] })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    let tail = data[at..].to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&tail);
    });
    let decoded = child.wait_with_output()?.stdout;
    let _ = feeder.join();
    if decoded.starts_with(b"\x7fELF") {
        std::fs::write(&out, decoded)?;
        Ok(out)
    } else {
        Ok(vmlinuz)
    }
}

/// The guest's first process: load the 9p/overlay modules, mount the host's root read-only
/// under a tmpfs overlay, the kernel's modules, the workspace and the I/O share, then
/// switch_root (so the kernel's module autoloading finds the host's modprobe) and run the
/// command, writing its exit status where the host reads it.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m || echo "vm: insmod $m failed"; done
for a in $(cat /proc/cmdline); do case $a in dp.*=*) k=${a%%=*}; eval "${k#dp.}='${a#*=}'";; esac; done
O=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $O,ro,cache=loose hostroot /lower || { echo "vm: mounting the host root failed"; poweroff -f; }
mount -t tmpfs -o mode=755 tmpfs /upper; mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot
N=/newroot
mount -t proc proc $N/proc; mount -t sysfs sys $N/sys; mount -t devtmpfs dev $N/dev
mkdir -p $N/dev/pts $N/dev/shm; mount -t devpts -o newinstance,ptmxmode=666 devpts $N/dev/pts; mount -t tmpfs tmpfs $N/dev/shm
mount -t tmpfs -o mode=755 tmpfs $N/run; mkdir -p $N/run/vmio $N/run/lock
mount -t tmpfs -o mode=1777 tmpfs $N/tmp
mount -t bpf bpf $N/sys/fs/bpf; mount -t cgroup2 cgroup2 $N/sys/fs/cgroup 2>/dev/null
mkdir -p $N/usr/lib/modules/$kver && mount -t 9p -o $O,ro,cache=loose kmods $N/usr/lib/modules/$kver
mount -t 9p -o $O vmio $N/run/vmio
mkdir -p $N$share && mount -t 9p -o $O share $N$share
cat > $N/run/vm-init <<EOI
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
hostname dataplane-vm; ip link set lo up
/bin/sh /run/vmio/cmd.sh </dev/console >/dev/console 2>&1
echo \$? > /run/vmio/rc; sync
echo o > /proc/sysrq-trigger
# Init must not exit while the power-off runs (the kernel would panic, loudly, at
# loglevel 1); a sleep that cannot start any more (the root going away) just loops.
while :; do sleep 5 2>/dev/null; done
EOI
chmod +x $N/run/vm-init
exec switch_root $N /run/vm-init
"#;

fn initramfs(root: &Path, version: &str) -> Result<PathBuf> {
    // Named by what goes into it (the init script, the modules), so a change gets a new
    // image instead of the cached one.
    let script = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (INIT, BOOT_MODULES).hash(&mut h);
        h.finish()
    };
    let out = root.join(format!("dataplane-initrd-{script:016x}.cpio.gz"));
    if out.exists() {
        return Ok(out);
    }
    // Images of earlier scripts.
    for e in std::fs::read_dir(root)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("dataplane-initrd") && name.ends_with(".cpio.gz") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let work = root.join("initrd.build");
    let _ = std::fs::remove_dir_all(&work);
    for d in ["bin", "mods", "proc", "sys", "dev", "lower", "upper", "newroot"] {
        std::fs::create_dir_all(work.join(d))?;
    }
    let busybox =
        ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).exists()).context("busybox missing")?;
    std::fs::copy(busybox, work.join("bin/busybox"))?;
    let deps = output(
        Command::new("modprobe")
            .arg("-d")
            .arg(root)
            .arg("-S")
            .arg(version)
            .arg("--show-depends")
            .arg("-a")
            .args(BOOT_MODULES),
    )?;
    let mut order = String::new();
    for ko in deps.lines().filter_map(|l| l.strip_prefix("insmod ")).map(|l| l.split_whitespace().next().unwrap_or(""))
    {
        let path = Path::new(ko);
        let base = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let (name, data) = if let Some(n) = base.strip_suffix(".xz") {
            (n.to_string(), decompress("xz", path)?)
        } else if let Some(n) = base.strip_suffix(".zst") {
            (n.to_string(), decompress("zstd", path)?)
        } else {
            (base.clone(), std::fs::read(path)?)
        };
        if order.lines().any(|l| l == name) {
            continue;
        }
        std::fs::write(work.join("mods").join(&name), data)?;
        order.push_str(&name);
        order.push('\n');
    }
    std::fs::write(work.join("mods/order"), order)?;
    std::fs::write(work.join("init"), INIT)?;
    run_cmd(Command::new("chmod").arg("+x").arg(work.join("init")))?;
    let st = Command::new("sh")
        .current_dir(&work)
        .arg("-c")
        .arg(format!("find . | cpio -o -H newc --quiet | gzip -1 > {}", out.with_extension("tmp").display()))
        .status()?;
    if !st.success() {
        bail!("building the initramfs failed");
    }
    std::fs::rename(out.with_extension("tmp"), &out)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(out)
}

fn decompress(tool: &str, path: &Path) -> Result<Vec<u8>> {
    let out = Command::new(tool).arg("-dc").arg(path).output()?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed", path.display());
    }
    Ok(out.stdout)
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Run `argv` (in `cwd`, with the listed environment) inside a VM booting `k`; its exit
/// status. `share` is mounted read-write at its own path.
pub fn run_in_vm(k: &Kernel, share: &Path, cwd: &Path, env: &[(String, String)], argv: &[String]) -> Result<i32> {
    let io = std::env::temp_dir().join(format!("dataplane-vm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&io);
    std::fs::create_dir_all(&io)?;
    // The marker tells a VM that died while booting (retried once) from a command that
    // ended the VM (reported).
    let mut script = String::from("#!/bin/sh\n: > /run/vmio/started\n");
    // Only names a shell can export (cargo also sets e.g. CARGO_BIN_EXE_dataplane-bench).
    let valid = |k: &str| {
        k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    for (k, v) in env.iter().filter(|(k, _)| valid(k)) {
        script.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    script.push_str(&format!("cd {} || exit 125\n", sh_quote(&cwd.display().to_string())));
    script.push_str(&argv.iter().map(|a| sh_quote(a)).collect::<Vec<_>>().join(" "));
    script.push('\n');
    std::fs::write(io.join("cmd.sh"), script)?;
    let timeout = std::env::var("DATAPLANE_VM_TIMEOUT").unwrap_or_else(|_| "900".into());
    for attempt in 0.. {
        let status = boot(k, share, &io, &timeout)?;
        let rc = std::fs::read_to_string(io.join("rc")).ok().and_then(|s| s.trim().parse().ok());
        let started = io.join("started").exists();
        match rc {
            Some(rc) => {
                let _ = std::fs::remove_dir_all(&io);
                return Ok(rc);
            }
            None if status.code() == Some(124) => {
                let _ = std::fs::remove_dir_all(&io);
                bail!("the VM ({}) timed out after {timeout} s", k.name)
            }
            // Seen about once in twenty boots under emulation, with no message at all.
            None if !started && attempt == 0 => {
                eprintln!("xtask: the VM ({}) stopped while booting (qemu: {status}); booting it once more", k.name);
            }
            None => {
                let _ = std::fs::remove_dir_all(&io);
                let when = if started { "before the command finished" } else { "while booting, twice" };
                bail!("the VM ({}) failed {when} (qemu: {status})", k.name)
            }
        }
    }
    unreachable!("the loop returns")
}

/// One boot of `k` running `io`'s cmd.sh; qemu's exit status.
fn boot(k: &Kernel, share: &Path, io: &Path, timeout: &str) -> Result<std::process::ExitStatus> {
    let status = Command::new("timeout")
        .args(["--foreground", timeout, "qemu-system-x86_64"])
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2G"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot", "-net", "none"])
        .arg("-kernel")
        .arg(&k.image)
        .arg("-initrd")
        .arg(&k.initrd)
        .arg("-append")
        .arg(format!(
            // loglevel=1: only KERN_EMERG (a panic's message) reaches the console.
            "console=ttyS0 loglevel=1 panic=-1 tsc=reliable dp.kver={} dp.share={}",
            k.version,
            share.display()
        ))
        .args(["-fsdev", "local,id=r,path=/,security_model=none,readonly=on,multidevs=remap"])
        .args(["-device", "virtio-9p-pci,fsdev=r,mount_tag=hostroot"])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=kmods,security_model=none,readonly=on",
            k.root.join("lib/modules").join(&k.version).display()
        ))
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=vmio,security_model=none", io.display()))
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=share,security_model=none,multidevs=remap", share.display()))
        .stdin(Stdio::null())
        .status()
        .context("starting qemu-system-x86_64")?;
    Ok(status)
}
