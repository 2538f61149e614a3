//! Names for shell completion (`source <(COMPLETE=bash dataplane)`): the endpoints and
//! networks of the instance the environment names (DATAPLANE_STATE_DIR, DATAPLANE_BPFFS,
//! else the defaults), read from its store when the shell asks. Nothing when it cannot be
//! read (not root, no store yet): completion never fails a shell.

use clap_complete::CompletionCandidate;
use dataplane_user::control::Engine;

fn engine() -> Option<Engine> {
    let var = |k: &str, d: &str| std::env::var_os(k).map_or_else(|| std::path::PathBuf::from(d), Into::into);
    let state = var("DATAPLANE_STATE_DIR", "/var/lib/dataplane");
    if !state.join("state.db").exists() {
        return None;
    }
    Engine::open(&state, &var("DATAPLANE_BPFFS", dataplane_user::DEFAULT_BPFFS_DIR)).ok()
}

pub fn endpoints() -> Vec<CompletionCandidate> {
    let Some(mut e) = engine() else { return Vec::new() };
    e.endpoints().unwrap_or_default().into_iter().map(|(ep, _)| CompletionCandidate::new(ep.name)).collect()
}

pub fn networks() -> Vec<CompletionCandidate> {
    let Some(mut e) = engine() else { return Vec::new() };
    e.networks().unwrap_or_default().into_iter().map(|n| CompletionCandidate::new(n.name)).collect()
}
