//! `dataplane-cni`: the CNI plugin (see `dataplane_user::frontend::cni`).

fn main() {
    std::process::exit(dataplane_user::frontend::cni::main());
}
