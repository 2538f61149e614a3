//! `dataplane-cni`: the CNI plugin (see `dataplane_user::frontend::cni`).

fn main() {
    // Before any thread exists (see use_host_mounts). A runtime that runs plugins in a
    // private mount namespace gets the spec's error instead of a throwaway bpffs.
    if let Err(e) = dataplane_user::bpffs::use_host_mounts() {
        std::process::exit(dataplane_user::frontend::cni::fail(dataplane_user::frontend::cni::code::IO, &e));
    }
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == dataplane_user::control::background::HARDEN_ARG) {
        std::process::exit(dataplane_user::control::background::main(&args[2..]));
    }
    dataplane_user::timing::begin();
    let code = dataplane_user::frontend::cni::main();
    dataplane_user::timing::report();
    std::process::exit(code);
}
