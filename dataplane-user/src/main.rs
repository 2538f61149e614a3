//! `dataplane`: Docker-style host networks enforced by XDP/TC programs.

mod cli;

fn main() {
    let code = match cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dataplane: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
