//! Where a command's time goes: with `DATAPLANE_TIMINGS=1` every phase mark (the fault
//! points, store open, the quick reconcile, program attachment) is recorded and the list
//! is printed as one JSON line on stderr when the command ends. The bench reads it to
//! break attach and detach down; it costs one environment lookup when off.

use std::{
    sync::{Mutex, OnceLock},
    time::Instant,
};

static START: OnceLock<Option<Instant>> = OnceLock::new();
static MARKS: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());

fn start() -> Option<Instant> {
    *START.get_or_init(|| std::env::var_os("DATAPLANE_TIMINGS").is_some_and(|v| v == "1").then(Instant::now))
}

/// Start the clock (at the top of main; later marks count from here).
pub fn begin() {
    start();
}

/// Record that phase `name` ended now.
pub fn mark(name: &'static str) {
    if let Some(t0) = start() {
        let at = t0.elapsed().as_secs_f64() * 1e3;
        if let Ok(mut m) = MARKS.lock() {
            m.push((name, at));
        }
    }
}

/// Print the marks (milliseconds since [`begin`], in order) as
/// `dataplane: timings: [["phase", ms], ...]` on stderr, if enabled.
pub fn report() {
    if start().is_none() {
        return;
    }
    mark("exit");
    if let Ok(m) = MARKS.lock() {
        let list: Vec<String> = m.iter().map(|(n, t)| format!("[\"{n}\",{t:.3}]")).collect();
        eprintln!("dataplane: timings: [{}]", list.join(","));
    }
}
