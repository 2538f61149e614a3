//! `dataplane`: Docker-style host networks enforced by XDP/TC programs.

mod cli;

/// The error chain as one line, without causes the message before already quotes.
fn describe(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    // An ExitCode context is only there to carry the exit code: skip its text.
    let skip = usize::from(e.downcast_ref::<cli::ExitCode>().is_some());
    for cause in e.chain().skip(skip) {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

fn main() {
    // Before any thread exists (see use_host_mounts).
    if let Err(e) = dataplane_user::bpffs::use_host_mounts() {
        eprintln!("dataplane: error: {e}");
        std::process::exit(1);
    }
    // COMPLETE=SHELL: answer the shell's completion request (names from the store).
    cli::complete_env();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == dataplane_user::control::background::HARDEN_ARG) {
        std::process::exit(dataplane_user::control::background::main(&args[2..]));
    }
    dataplane_user::timing::begin();
    let code = match cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dataplane: error: {}", describe(&e));
            e.downcast_ref::<cli::ExitCode>().map_or(1, |c| c.0)
        }
    };
    dataplane_user::timing::report();
    std::process::exit(code);
}
