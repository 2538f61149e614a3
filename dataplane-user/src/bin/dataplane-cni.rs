//! `dataplane-cni`: the CNI plugin (see `dataplane_user::frontend::cni`).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == dataplane_user::control::background::HARDEN_ARG) {
        std::process::exit(dataplane_user::control::background::main(&args[2..]));
    }
    dataplane_user::timing::begin();
    let code = dataplane_user::frontend::cni::main();
    dataplane_user::timing::report();
    std::process::exit(code);
}
