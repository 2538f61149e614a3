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
    let code = match cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dataplane: error: {}", describe(&e));
            e.downcast_ref::<cli::ExitCode>().map_or(1, |c| c.0)
        }
    };
    std::process::exit(code);
}
