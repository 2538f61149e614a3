//! The layer table of docs/ARCHITECTURE.md holds: every `crate::X` (and, from the
//! binary's `cli/`, `dataplane_user::X`) path in dataplane-user's sources names a module
//! of a lower layer than the file's own. Needs no root.

use std::{collections::BTreeMap, path::Path};

/// Module -> layer, from the table after the `<!-- layers` marker.
fn table() -> BTreeMap<String, u32> {
    table_after("<!-- layers")
}

/// Module -> layer, from the table after `marker` in docs/ARCHITECTURE.md.
fn table_after(marker: &str) -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ARCHITECTURE.md")).unwrap();
    let at = doc.find(marker).unwrap_or_else(|| panic!("the marker {marker:?} in docs/ARCHITECTURE.md"));
    let mut out = BTreeMap::new();
    for line in doc[at..].lines().skip(1).skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Ok(layer) = cells[1].parse::<u32>() else { continue };
        // The modules are the cell's `quoted` names (anything else there is a remark).
        for m in cells[2].split('`').skip(1).step_by(2) {
            if !m.contains(' ') {
                out.insert(m.to_string(), layer);
            }
        }
    }
    assert!(out.len() > 5, "the layer table after {marker} could not be read: {out:?}");
    out
}

/// The module a source file belongs to (`workers/unlink.rs` -> `workers::unlink`).
fn module_of(rel: &str) -> Option<String> {
    let parts: Vec<&str> = rel.trim_end_matches(".rs").split('/').collect();
    match parts.as_slice() {
        ["lib"] | ["main"] | ["bin", ..] | ["workers", "mod"] | [] => None,
        ["workers", sub] => Some(format!("workers::{sub}")),
        [top, ..] => Some(top.to_string()),
    }
}

/// The group after `{` up to its matching `}`, split at its top-level commas.
fn group_items(group: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (1, 0, Vec::new());
    for (j, ch) in group.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    items.push(&group[start..j]);
                    break;
                }
            }
            ',' if depth == 1 => {
                items.push(&group[start..j]);
                start = j + 1;
            }
            _ => {}
        }
    }
    items
}

/// Modules a file's code (comments left out) uses through `root::`.
fn uses(code: &str, root: &str) -> Vec<String> {
    let code: String = code.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    let prefix = format!("{root}::");
    let mut rest = code.as_str();
    while let Some(i) = rest.find(&prefix) {
        // A path, not the end of another identifier (`my_crate::`).
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        match rest.strip_prefix('{') {
            Some(group) => out.extend(group_items(group).into_iter().map(|n| path_module(n.trim()))),
            None => out.push(path_module(rest)),
        }
    }
    out.into_iter().filter(|m| !m.is_empty()).collect()
}

/// `workers::unlink::x` -> `workers::unlink`, `bpf::{a}` -> `bpf`, a crate-root item
/// (`DEFAULT_BPFFS_DIR`) -> nothing.
fn path_module(path: &str) -> String {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let first = ident(path);
    let after = &path[first.len()..];
    if !after.starts_with("::") {
        return if first.chars().next().is_some_and(|c| c.is_lowercase()) { first } else { String::new() };
    }
    if first == "workers" {
        let second = ident(&after[2..]);
        if !second.is_empty() {
            return format!("workers::{second}");
        }
    }
    first
}

fn layer_of(table: &BTreeMap<String, u32>, module: &str) -> Option<u32> {
    table.get(module).copied().or_else(|| {
        // `workers` as a whole: its highest part.
        table.iter().filter(|(k, _)| k.starts_with(&format!("{module}::"))).map(|(_, v)| *v).max()
    })
}

#[test]
fn imports_point_down_the_layer_table() {
    let table = table();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut wrong = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().to_string();
        let Some(module) = module_of(&rel) else { continue };
        let mine =
            layer_of(&table, &module).unwrap_or_else(|| panic!("{rel}: module {module} is not in the layer table"));
        let code = std::fs::read_to_string(f).unwrap();
        let root = if module == "cli" { "dataplane_user" } else { "crate" };
        for dep in uses(&code, root) {
            if dep == module || module.starts_with(&format!("{dep}::")) || dep.starts_with(&format!("{module}::")) {
                continue;
            }
            checked += 1;
            match layer_of(&table, &dep) {
                Some(l) if l < mine => {}
                Some(l) => wrong.push(format!("{rel} ({module}, layer {mine}) uses {dep} (layer {l})")),
                None => wrong.push(format!("{rel} uses {dep}, which is not in the layer table")),
            }
        }
    }
    assert!(checked > 50, "too few imports found ({checked}): the reader is broken");
    assert!(wrong.is_empty(), "imports against the layer table:\n{}", wrong.join("\n"));
}

#[test]
fn the_reader_sees_grouped_and_nested_paths() {
    let code = "use crate::{\n    bpf::{self, AttachMode},\n    ipam::Cidr, // crate::control in a comment\n};\n\
                let x = crate::workers::unlink::wait();\nlet y = my_crate::store::X; crate::DEFAULT_BPFFS_DIR;";
    assert_eq!(uses(code, "crate"), vec!["bpf", "ipam", "workers::unlink"]);
    assert_eq!(module_of("workers/upgrade.rs").as_deref(), Some("workers::upgrade"));
    assert_eq!(module_of("control/network.rs").as_deref(), Some("control"));
}

#[test]
fn the_engines_files_import_down_their_own_table() {
    let table = table_after("<!-- control layers");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/control");
    let mut wrong = Vec::new();
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().trim_end_matches(".rs").to_string();
        if name == "mod" {
            continue;
        }
        let mine = *table.get(&name).unwrap_or_else(|| panic!("control/{name}.rs is not in the control layer table"));
        let code = std::fs::read_to_string(e.path()).unwrap();
        // `super::X` names a sibling file only when X is one; otherwise it is an item of
        // mod.rs (the engine's own types), which every file may use.
        for dep in uses(&code, "super").into_iter().filter(|d| table.contains_key(d) && *d != name) {
            checked += 1;
            if table[&dep] >= mine {
                wrong.push(format!("control/{name}.rs (layer {mine}) uses {dep} (layer {})", table[&dep]));
            }
        }
    }
    assert!(checked > 15, "too few imports found ({checked}): the reader is broken");
    assert!(wrong.is_empty(), "imports against the control layer table:\n{}", wrong.join("\n"));
}
