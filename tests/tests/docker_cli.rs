//! What a Docker user types, answered as Docker answers: `ps -a/-q/--format`, `inspect`,
//! `logs`, `network ls --format`, and shell completion of endpoint and network names.

use dataplane_tests::{
    json_lines,
    lab::{host_with_switch, unique},
};
use serde_json::Value;

#[test]
fn ps_inspect_and_logs_speak_dockers_dialect() {
    let (h, _sw) = host_with_switch("dpK").unwrap();
    h.ok(&[
        "network",
        "create",
        "--subnet=10.62.0.0/24",
        "--ipv6",
        "--subnet=fd00:62::/64",
        "-o",
        "parent=eth0",
        "n62",
    ]);
    h.ok(&["network", "create", "--subnet=10.63.0.0/24", "-o", "parent=eth0", "n63"]);
    let (up, done, two) = (unique("up"), unique("done"), unique("two"));
    h.ok(&["run", "-d", "--name", &up, "--network", "n62", "--", "sleep", "600"]);
    h.ok(&[
        "run",
        "-d",
        "--name",
        &done,
        "--network",
        "n62",
        "--",
        "sh",
        "-c",
        "echo hello from done; echo oops >&2; exit 3",
    ]);
    h.ok(&["run", "-d", "--name", &two, "--network", "n63", "--ip", "10.63.0.9"]);
    h.ok(&["network", "connect", "n62", &two]);
    let exited = dataplane_tests::lab::wait_until(std::time::Duration::from_secs(10), || {
        json_lines(&h.ok(&["ps", "-a", "--format", "json"]))
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["Names"] == done.as_str() && e["State"] == "exited")
    });
    assert!(exited, "{} never exited", done);

    // Without -a the exited endpoint is left out; -q prints IDs only.
    let ps = json_lines(&h.ok(&["ps", "--format", "json"]));
    let names: Vec<&str> = ps.as_array().unwrap().iter().map(|e| e["Names"].as_str().unwrap()).collect();
    assert!(
        names.contains(&up.as_str()) && names.contains(&two.as_str()) && !names.contains(&done.as_str()),
        "{names:?}"
    );
    let all = json_lines(&h.ok(&["ps", "-a", "--format", "json"]));
    let row = |n: &str| all.as_array().unwrap().iter().find(|e| e["Names"] == n).cloned().unwrap();
    assert_eq!(row(&done)["ExitCode"], 3, "{all:#}");
    assert!(row(&done)["Status"].as_str().unwrap().starts_with("exited (3) "), "{all:#}");
    assert_eq!(row(&up)["State"], "running");
    let ids = h.ok(&["ps", "-q", "-a"]);
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.contains(&row(&done)["ID"].as_str().unwrap()), "{ids:?}");
    // Templates over the JSON keys.
    let t = h.ok(&["ps", "-a", "--format", "{{.Names}}\\t{{.State}}"]);
    assert!(t.lines().any(|l| l == format!("{done}\texited")), "{t}");
    let j = h.ok(&["ps", "--format", "{{json .}}"]);
    assert_eq!(json_lines(&j).as_array().unwrap().len(), 2, "{j}");
    let bad = h.dp(&["ps", "--format", "{{range .}}"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("{{range .}} is not supported"), "{bad:?}");
    // The table: one aligned row per endpoint, eth0's addresses, an IPv6 column.
    let table = h.ok(&["ps"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].contains("IPV6"), "{table}");
    let status_col = lines[0].find("STATUS").unwrap();
    for l in &lines[1..] {
        assert!(
            l.len() > status_col && !l[..status_col].ends_with(|c: char| !c.is_whitespace()),
            "misaligned: {table}"
        );
    }
    let two_line = lines.iter().find(|l| l.contains(two.as_str())).unwrap();
    assert!(two_line.contains("10.63.0.9") && two_line.contains("n63,n62"), "{table}");
    let up_line = lines.iter().find(|l| l.contains(up.as_str())).unwrap();
    assert!(up_line.contains("fd00:62::"), "no IPv6 address in {table}");

    // inspect: an array, or a template per endpoint.
    let v: Value = serde_json::from_str(&h.ok(&["inspect", &up, &two])).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["Networks"].as_array().unwrap().len(), 2, "{v:#}");
    assert_eq!(h.ok(&["inspect", "-f", "{{.State}}", &done]).trim(), "exited");
    let missing = h.dp(&["inspect", "ghost"]);
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("endpoint ghost not found"));

    // logs: what the command wrote; gone with rm.
    let logs = h.ok(&["logs", &done]);
    assert!(logs.contains("hello from done") && logs.contains("oops"), "{logs}");
    let none = h.dp(&["logs", &two]);
    assert!(String::from_utf8_lossy(&none.stderr).contains("runs no command"), "{none:?}");
    let log_file = h.state.join("logs").join(format!("{done}.log"));
    assert!(log_file.exists());
    h.ok(&["rm", &done]);
    assert!(!log_file.exists(), "rm left the log");
    assert!(!h.state.join("logs").join(format!("{done}.exit")).exists(), "rm left the exit record");

    // network ls: -q, json lines, templates.
    let nets = json_lines(&h.ok(&["network", "ls", "--format", "json"]));
    assert_eq!(nets.as_array().unwrap().len(), 4, "{nets:#}");
    assert_eq!(h.ok(&["network", "ls", "-q"]).lines().count(), 4);
    let names = h.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(names.lines().any(|l| l == "n62") && names.lines().any(|l| l == "none"), "{names}");

    // Completion of names through the shell's protocol (COMPLETE=bash).
    let complete = |words: &[&str]| -> String {
        let out = h
            .command()
            .env("COMPLETE", "bash")
            .env("DATAPLANE_STATE_DIR", &h.state)
            .env("DATAPLANE_BPFFS", &h.bpffs.dir)
            .env("_CLAP_COMPLETE_INDEX", (words.len() - 1).to_string())
            .env("_CLAP_COMPLETE_COMP_TYPE", "9")
            .env("_CLAP_COMPLETE_SPACE", "true")
            .env("_CLAP_IFS", "\n")
            .arg("--")
            .args(words)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let eps = complete(&["dataplane", "logs", ""]);
    assert!(eps.lines().any(|l| l == up) && eps.lines().any(|l| l == two), "{eps:?}");
    let nets = complete(&["dataplane", "network", "rm", ""]);
    assert!(nets.lines().any(|l| l == "n62") && nets.lines().any(|l| l == "n63"), "{nets:?}");

    h.ok(&["rm", "-f", &up, &two]);
    h.ok(&["network", "rm", "n62", "n63"]);
}
