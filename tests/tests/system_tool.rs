//! The conventions of a system tool: shell completions and man pages, generated from the
//! same command definition the binary parses.

use std::process::Command;

use dataplane_tests::lab::dataplane_bin;

#[test]
fn bash_completions_parse_and_know_the_commands() {
    let out = Command::new(dataplane_bin()).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for word in ["network", "plugin", "metrics", "reconcile", "--take-over", "--mac-address"] {
        assert!(script.contains(word), "{word} missing from the bash completions");
    }
    let check = Command::new("bash").arg("-n").arg("-c").arg(&script).status().unwrap();
    assert!(check.success(), "bash rejects the completion script");
    let bad = Command::new(dataplane_bin()).args(["completions", "tcsh"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("tcsh"));
}

#[test]
fn man_pages_cover_every_command() {
    let dir = std::env::temp_dir().join(dataplane_tests::lab::unique("dpman-"));
    assert!(Command::new(dataplane_bin()).arg("__man").arg(&dir).status().unwrap().success());
    for page in [
        "dataplane.1",
        "dataplane-network-create.1",
        "dataplane-plugin-docker.1",
        "dataplane-metrics.1",
        "dataplane-run.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page} is not a man page");
        assert!(text.contains(".SH NAME") && text.contains(".SH OPTIONS"), "{page}");
    }
    let create = std::fs::read_to_string(dir.join("dataplane-network-create.1")).unwrap();
    assert!(create.contains("aux\\-address"), "network create's options are missing");
    let _ = std::fs::remove_dir_all(&dir);
}
