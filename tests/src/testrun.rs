//! Our programs run by the kernel on crafted frames (BPF_PROG_TEST_RUN), with their maps
//! in a private bpffs dir: the one harness the test-run tests share.

use aya::programs::{Program, TestRun, TestRunOptions};
use dataplane_user::bpf::{self, Pins};

use crate::Bpffs;

/// A test run without a context runs the program as if on the loopback device.
pub const LO: u32 = 1;

pub struct TestRunner {
    _bpffs: Bpffs,
    pub pins: Pins,
    ebpf: aya::Ebpf,
}

/// What one run returned.
pub struct RunResult {
    pub verdict: u32,
    /// The frame as the program left it.
    pub out: Vec<u8>,
}

impl TestRunner {
    /// Load the object with its maps in a fresh bpffs dir, and the programs `names` (XDP
    /// or tc, by their type in the object).
    pub fn new(names: &[&str]) -> TestRunner {
        let bpffs = Bpffs::new().expect("a private bpffs dir");
        let pins = Pins::new(&bpffs.dir);
        let mut ebpf = bpf::load_object(&pins.maps_dir()).expect("loading the eBPF object");
        for name in names {
            match ebpf.program_mut(name).unwrap_or_else(|| panic!("no program {name} in the object")) {
                Program::Xdp(p) => p.load(),
                Program::SchedClassifier(p) => p.load(),
                _ => panic!("program {name} is neither XDP nor tc"),
            }
            .unwrap_or_else(|e| panic!("loading {name}: {e}"));
        }
        TestRunner { _bpffs: bpffs, pins, ebpf }
    }

    /// Run program `name` on `frame`; Err where the kernel refuses the frame's shape.
    pub fn try_run(&self, name: &str, frame: &[u8]) -> Result<RunResult, aya::programs::ProgramError> {
        self.try_run_on(name, frame, None)
    }

    /// [`TestRunner::run`] for a tc program as if on interface `ifindex` of the calling
    /// thread's namespace (named in the test run's `__sk_buff` context).
    pub fn run_on(&self, name: &str, frame: &[u8], ifindex: u32) -> RunResult {
        self.try_run_on(name, frame, Some(ifindex))
            .unwrap_or_else(|e| panic!("test run of {name} on ifindex {ifindex}: {e}"))
    }

    fn try_run_on(
        &self,
        name: &str,
        frame: &[u8],
        ifindex: Option<u32>,
    ) -> Result<RunResult, aya::programs::ProgramError> {
        let mut out = vec![0u8; frame.len() + 256];
        // struct __sk_buff: ifindex at offset 40; every other field zero.
        let mut ctx = [0u8; 192];
        if let Some(i) = ifindex {
            ctx[40..44].copy_from_slice(&i.to_ne_bytes());
        }
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ifindex.map(|_| &ctx[..]),
            ..Default::default()
        };
        let r = match self.ebpf.program(name).unwrap_or_else(|| panic!("no program {name} in the object")) {
            Program::Xdp(p) => p.test_run(opts)?,
            Program::SchedClassifier(p) => p.test_run(opts)?,
            _ => panic!("program {name} is neither XDP nor tc"),
        };
        out.truncate(r.data_size_out as usize);
        Ok(RunResult { verdict: r.return_value, out })
    }

    /// [`TestRunner::try_run`] that fails the test if the kernel refuses the frame.
    pub fn run(&self, name: &str, frame: &[u8]) -> RunResult {
        self.try_run(name, frame).unwrap_or_else(|e| panic!("test run of {name} on a {}-byte frame: {e}", frame.len()))
    }

    /// Packets counted on the loopback device for `reason`.
    pub fn counter(&self, reason: dataplane_common::Reason) -> u64 {
        bpf::counters::read(&self.pins).unwrap().get(&(LO, reason)).map_or(0, |c| c.packets)
    }
}
