//! `--format` as Docker reads it: `table` (the default), `json` (one JSON object per line,
//! as `docker ps --format json` prints), or a Go-style template over the row's JSON keys:
//! `{{.Names}}`, `{{.ID}}\t{{.Status}}`, `{{json .}}`, `{{json .Networks}}`; a leading
//! `table ` prints a header line of the keys first. Only these forms exist (no pipelines,
//! conditionals or functions beyond `json`): anything else is refused, naming it.

use anyhow::{bail, Result};
use serde_json::Value;

/// How to print rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Table,
    JsonLines,
    Template { header: bool, parts: Vec<Part> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// `{{.Key}}`: the value as text (strings bare, lists joined with commas).
    Field(String),
    /// `{{json .}}` (None) or `{{json .Key}}`.
    Json(Option<String>),
}

impl Output {
    pub fn parse(format: &str) -> Result<Output> {
        match format {
            "" | "table" => return Ok(Output::Table),
            "json" => return Ok(Output::JsonLines),
            _ => {}
        }
        let (header, body) = match format.strip_prefix("table ") {
            Some(rest) => (true, rest),
            None => (false, format),
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = body.as_str();
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let Some(end) = rest[start..].find("}}") else { bail!("invalid --format {format:?}: an unclosed {{{{") };
            let action = rest[start + 2..start + end].trim();
            parts.push(parse_action(format, action)?);
            rest = &rest[start + end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Output::Template { header, parts })
    }

    /// Print `rows` (JSON objects) in this form; `table` is the caller's to print.
    pub fn print(&self, rows: &[Value]) {
        match self {
            Output::Table => {}
            Output::JsonLines => {
                for r in rows {
                    println!("{r}");
                }
            }
            Output::Template { header, parts } => {
                if *header {
                    let head: String = parts
                        .iter()
                        .map(|p| match p {
                            Part::Text(t) => t.clone(),
                            Part::Field(k) | Part::Json(Some(k)) => upper(k),
                            Part::Json(None) => "JSON".into(),
                        })
                        .collect();
                    println!("{head}");
                }
                for r in rows {
                    println!("{}", render(parts, r));
                }
            }
        }
    }
}

fn parse_action(format: &str, action: &str) -> Result<Part> {
    if action == "json ." {
        return Ok(Part::Json(None));
    }
    if let Some(k) = action.strip_prefix("json .") {
        return Ok(Part::Json(Some(k.to_string())));
    }
    match action.strip_prefix('.') {
        Some(k) if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Ok(Part::Field(k.to_string()))
        }
        _ => bail!("invalid --format {format:?}: {{{{{action}}}}} is not supported (use {{{{.Key}}}}, {{{{json .}}}} or {{{{json .Key}}}})"),
    }
}

/// `IPv4Address` -> `IPV4 ADDRESS`, `Names` -> `NAMES`.
fn upper(key: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = key.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if i > 0 && c.is_ascii_uppercase() && (chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit()) {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                // A list of objects (a row's networks): their names.
                Value::Object(o) => {
                    o.get("Network").or_else(|| o.get("Name")).map(text).unwrap_or_else(|| x.to_string())
                }
                other => text(other),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn render(parts: &[Part], row: &Value) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Text(t) => t.clone(),
            Part::Field(k) => text(&row[k.as_str()]),
            Part::Json(None) => row.to_string(),
            Part::Json(Some(k)) => row[k.as_str()].to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_render_docker_style() {
        let row = json!({"ID": "abc", "Names": "web", "Networks": [{"Network": "n1"}, {"Network": "n2"}], "N": 3});
        let Output::Template { header, parts } = Output::parse("{{.Names}}\\t{{.ID}} {{.Networks}} {{.N}}").unwrap()
        else {
            panic!()
        };
        assert!(!header);
        assert_eq!(render(&parts, &row), "web\tabc n1,n2 3");
        let Output::Template { parts, .. } = Output::parse("{{json .}}").unwrap() else { panic!() };
        assert_eq!(render(&parts, &row), row.to_string());
        let Output::Template { header, parts } = Output::parse("table {{.Names}}").unwrap() else { panic!() };
        assert!(header && render(&parts, &row) == "web");
        assert_eq!(upper("IPv4Address"), "IPV4 ADDRESS");
        assert_eq!(Output::parse("json").unwrap(), Output::JsonLines);
        let e = Output::parse("{{range .}}x{{end}}").unwrap_err().to_string();
        assert!(e.contains("{{range .}} is not supported"), "{e}");
        let e = Output::parse("{{.Names").unwrap_err().to_string();
        assert!(e.contains("unclosed"), "{e}");
    }
}
