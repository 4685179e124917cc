//! How warrenctl prints, as rabbitmqctl 3.10 does: informational lines ("Listing queues
//! for vhost / ...") unless `--quiet`/`--silent`, then a tab-separated table with a header
//! row (dropped by `--silent` and `--no-table-headers`, and absent when there are no
//! rows), or with `--formatter json` a JSON array of one object per row.
//!
//! Imports only serde_json; never the broker.

use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Formatter {
    /// Tab-separated values with a header row (rabbitmqctl's default).
    Table,
    /// A JSON array with one object per row, or one JSON document.
    Json,
}

#[derive(Clone, Copy)]
pub struct Output {
    pub quiet: bool,
    pub silent: bool,
    pub no_table_headers: bool,
    pub formatter: Formatter,
}

impl Output {
    pub fn json(&self) -> bool {
        self.formatter == Formatter::Json
    }

    /// An informational line ("Adding user ..."): on stdout like rabbitmqctl, and not
    /// with `--quiet`, `--silent` or `--formatter json` (which must stay parseable).
    pub fn info(&self, line: &str) {
        if !self.quiet && !self.silent && !self.json() {
            println!("{line}");
        }
    }

    /// Prints rows of `columns` (values as the API gave them, already picked per column).
    pub fn table(&self, columns: &[String], rows: &[Vec<Value>]) {
        if self.json() {
            // rabbitmqctl's JSON list shape: one object per line, commas leading.
            let mut text = String::from("[\n");
            for (i, row) in rows.iter().enumerate() {
                // Written by hand to keep the columns in the order asked for (a
                // serde_json map would sort them).
                let fields: Vec<String> = columns
                    .iter()
                    .zip(row)
                    .map(|(column, value)| format!("{}:{value}", Value::String(column.clone())))
                    .collect();
                if i > 0 {
                    text.push(',');
                }
                text.push('{');
                text.push_str(&fields.join(","));
                text.push_str("}\n");
            }
            text.push(']');
            println!("{text}");
            return;
        }
        if rows.is_empty() {
            return;
        }
        let mut text = String::new();
        if !self.silent && !self.no_table_headers {
            text.push_str(&columns.join("\t"));
            text.push('\n');
        }
        for row in rows {
            let cells: Vec<String> = row.iter().map(cell).collect();
            text.push_str(&cells.join("\t"));
            text.push('\n');
        }
        print!("{text}");
    }
}

/// One table cell as rabbitmqctl prints it: strings bare, `null` empty, lists as
/// `[a, b]`, tables (arguments, client properties) as `[{"key",value}, ...]`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(_) | Value::Number(_) => value.to_string(),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(cell).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{{{},{}}}", Value::String(k.clone()), nested(v)))
                .collect();
            format!("[{}]", inner.join(","))
        }
    }
}

/// A value inside a table: strings quoted, as rabbitmqctl shows argument values.
fn nested(value: &Value) -> String {
    match value {
        Value::String(_) => value.to_string(),
        other => cell(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_look_like_rabbitmqctl() {
        assert_eq!(cell(&json!(null)), "");
        assert_eq!(
            cell(&json!(["monitoring", "management"])),
            "[monitoring, management]"
        );
        assert_eq!(cell(&json!({})), "[]");
        assert_eq!(
            cell(&json!({"x-max-length": 10, "x-queue-mode": "lazy"})),
            r#"[{"x-max-length",10},{"x-queue-mode","lazy"}]"#
        );
        assert_eq!(cell(&json!(1.0)), "1.0");
    }
}
