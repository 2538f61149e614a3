//! The Kubernetes manifests under deploy/kubernetes parse, and name the binary, the paths
//! and the configuration the code actually uses.

use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;

fn docs(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .collect()
}

fn s(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap()
}

#[test]
fn daemonset_installs_the_binary_and_mounts_what_the_code_uses() {
    let d = docs("daemonset.yaml");
    assert_eq!(d.len(), 1);
    let ds = &d[0];
    assert_eq!(ds["kind"], "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    let host_paths: Vec<String> = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str().map(str::to_string))
        .collect();
    for p in ["/opt/cni/bin", "/sys/fs/bpf", "/var/lib/dataplane"] {
        assert!(host_paths.iter().any(|h| h == p), "no hostPath {p}: {host_paths:?}");
    }
    let bpffs_parent = Path::new(dataplane_user::DEFAULT_BPFFS_DIR).parent().unwrap().display().to_string();
    assert!(
        host_paths.contains(&bpffs_parent),
        "the bpffs default {} is not mounted",
        dataplane_user::DEFAULT_BPFFS_DIR
    );
    let install = s(&spec["initContainers"][0]);
    assert!(
        install.contains("/usr/bin/dataplane-cni") && install.contains("/host/opt/cni/bin/dataplane-cni"),
        "{install}"
    );
    let main = &spec["containers"][0];
    assert_eq!(main["securityContext"]["privileged"], true);
    let args = s(&main["args"]);
    assert!(
        args.contains(dataplane_user::DEFAULT_BPFFS_DIR)
            && args.contains("/var/lib/dataplane")
            && args.contains("reconcile"),
        "{args}"
    );
    // The binary the init container copies is the one `cargo xtask build` makes.
    assert!(dataplane_tests::cni::cni_bin().is_file());
}

#[test]
fn network_attachments_carry_configs_the_plugin_accepts() {
    let d = docs("network-attachment-vlan50.yaml");
    assert_eq!(d.len(), 2);
    for nad in &d {
        assert_eq!(nad["kind"], "NetworkAttachmentDefinition");
        assert_eq!(nad["apiVersion"], "k8s.cni.cncf.io/v1");
        let config = nad["spec"]["config"].as_str().unwrap();
        let v: serde_json::Value = serde_json::from_str(config).unwrap_or_else(|e| panic!("{config}: {e}"));
        assert_eq!(v["type"], "dataplane-cni");
        assert_eq!(v["name"], nad["metadata"]["name"].as_str().unwrap(), "the CNI name should be the NAD's");
        if let Some(b) = v["bpffs"].as_str() {
            assert_eq!(b, dataplane_user::DEFAULT_BPFFS_DIR);
        }
        dataplane_user::frontend::cni::validate_config(config.as_bytes())
            .unwrap_or_else(|e| panic!("{}: code {} {}", nad["metadata"]["name"].as_str().unwrap(), e.code, e.msg));
    }
    let pod = docs("pod-example.yaml");
    assert_eq!(pod[0]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"], d[0]["metadata"]["name"]);
}
