//! Tables and dates for people.

use serde_json::Value;

/// `2026-11-21 23:40:05` from unix seconds.
pub fn utc(secs: i64) -> String {
    shared::ids::iso8601(secs)
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_owned()
}

pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `1.5 MiB` from bytes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A plain text table, columns as wide as their widest cell; `*_at` numbers are shown as UTC
/// times, long cells are cut at 60 characters.
pub fn table(rows: &[Value], columns: &[(&str, &str)]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|(key, _)| match (*key, &r[*key]) {
                    (k, Value::Number(n)) if k.ends_with("_at") => {
                        n.as_i64().map(utc).unwrap_or_default()
                    }
                    (_, v) => {
                        let s = cell(v).replace(['\n', '\r', '\t'], " ");
                        if s.chars().count() > 60 {
                            format!("{}…", s.chars().take(59).collect::<String>())
                        } else {
                            s
                        }
                    }
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, title))| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(columns.iter().map(|(_, t)| (*t).to_owned()).collect())];
    out.extend(cells.into_iter().map(line));
    out.join("\n")
}

/// Up to `shown` ids, one a line, then how many more.
pub fn id_list(ids: &[String], shown: usize) -> String {
    let mut out: Vec<String> = ids.iter().take(shown).map(|i| format!("  {i}")).collect();
    if ids.len() > shown {
        out.push(format!(
            "  … and {} more (--json lists them all)",
            ids.len() - shown
        ));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_and_tables() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_795_219_200 + 3661), "2026-11-21 01:01:01");
        let t = table(
            &[json!({"id": "a", "n": 10, "created_at": 0})],
            &[("id", "ID"), ("n", "COUNT"), ("created_at", "CREATED")],
        );
        assert_eq!(t, "ID  COUNT  CREATED\na   10     1970-01-01 00:00:00");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        let ids: Vec<String> = (0..3).map(|i| i.to_string()).collect();
        assert_eq!(
            id_list(&ids, 2),
            "  0\n  1\n  … and 1 more (--json lists them all)"
        );
    }
}
