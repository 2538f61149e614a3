//! `dataplane`: Docker-style host networks enforced by XDP/TC programs.

mod cli;

fn main() {
    let code = match cli::run() {
        Ok(code) => code,
        Err(e) => {
            let code = e.downcast_ref::<cli::ExitCode>().map_or(1, |c| c.0);
            // The context only carries the exit code; print the cause itself.
            let msg = if e.downcast_ref::<cli::ExitCode>().is_some() {
                e.chain().skip(1).map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
            } else {
                format!("{e:#}")
            };
            eprintln!("dataplane: error: {msg}");
            code
        }
    };
    std::process::exit(code);
}
