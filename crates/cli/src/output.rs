//! Output: tables for people, JSON for scripts, and errors that name the problem.

use std::io::Write;

use serde_json::Value;

/// One table column: header and how to read the cell from an object.
pub struct Column {
    pub header: &'static str,
    pub get: fn(&Value) -> String,
}

/// A field as text (`-` when absent).
pub fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => {
            a.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect::<Vec<_>>().join(",")
        }
        Some(other) => other.to_string(),
    }
}

/// Prints rows as an aligned table.
pub fn table(columns: &[Column], rows: &[Value]) {
    let cells: Vec<Vec<String>> = rows.iter().map(|r| columns.iter().map(|c| (c.get)(r)).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).chain([c.header.len()]).max().unwrap_or(0))
        .collect();
    let mut out = std::io::stdout().lock();
    let line = |out: &mut std::io::StdoutLock, vals: Vec<&str>| {
        let s: Vec<String> = vals.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        let _ = writeln!(out, "{}", s.join("  ").trim_end());
    };
    line(&mut out, columns.iter().map(|c| c.header).collect());
    for row in &cells {
        line(&mut out, row.iter().map(String::as_str).collect());
    }
}

/// Prints one object: pretty JSON, or `key: value` lines.
pub fn object(v: &Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    match v.as_object() {
        Some(map) => {
            let width = map.keys().map(String::len).max().unwrap_or(0);
            for (k, val) in map {
                let shown = match val {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                println!("{k:<width$}  {shown}");
            }
        }
        None => println!("{v}"),
    }
}

/// Prints an error with its causes; API errors show their code and each field problem.
pub fn print_error(e: &anyhow::Error) {
    let mut err = std::io::stderr().lock();
    for (i, cause) in e.chain().enumerate() {
        let lead = if i == 0 { "error: " } else { "  caused by: " };
        match cause.downcast_ref::<nereid_client::Error>() {
            Some(nereid_client::Error::Api { code, message, errors, .. }) => {
                // Field problems get a line each; the summary would repeat them.
                let head =
                    if !errors.is_empty() && message.starts_with("Invalid parameters:") { "Invalid parameters" } else { message.as_str() };
                let _ = writeln!(err, "{lead}{head} ({code})");
                for fe in errors {
                    let _ = writeln!(err, "    {}: {} ({})", fe.field, fe.message, fe.code);
                }
                // Its own sources are not more useful than the API's message.
                return;
            }
            _ => {
                let _ = writeln!(err, "{lead}{cause}");
            }
        }
    }
}
