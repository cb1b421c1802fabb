//! Human output: aligned key/value blocks, state colours on a terminal only, sizes and durations.

use std::io::IsTerminal;

/// Whether to colour output: stdout is a terminal and `NO_COLOR` is not set.
pub fn use_colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Paint a state word: green for healthy, yellow for transitional, red for bad.
pub fn state(word: &str, colour: bool) -> String {
    if !colour {
        return word.to_owned();
    }
    let code = match word {
        "ok" | "alive" | "compliant" => "32",
        "initializing" | "starting" | "suspect" | "warning" | "stopping" | "pending" => "33",
        "error" | "dead" | "critical" => "31",
        "left" => "2",
        _ => "2",
    };
    format!("\x1b[{code}m{word}\x1b[0m")
}

/// A `label  value` block with the labels padded to the same width.
pub fn key_values(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("  {k:<width$}  {v}\n"))
        .collect()
}

/// An aligned table with a header row; widths count characters, not bytes.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let visible = |s: &str| strip_ansi(s).chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(visible(cell));
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let last = i + 1 == cells.len();
            out.push_str(cell);
            if !last {
                let pad = widths[i].saturating_sub(visible(cell)) + 2;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// A member state with its symbol: `✓ alive`, `? suspect`, `✗ dead`, `- left`.
pub fn member_state(state: &str, colour: bool) -> String {
    let symbol = match state {
        "alive" => "✓",
        "suspect" => "?",
        "dead" => "✗",
        "left" => "-",
        _ => " ",
    };
    format!("{symbol} {}", self::state(state, colour))
}

/// `12.3 MB` style sizes (decimal units, like `ps`/`top` users expect).
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

/// `1d 2h 3m 4s` style durations.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(12_300_000), "12.3 MB");
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(3725), "1h 2m 5s");
        assert_eq!(duration(90061), "1d 1h 1m");
        assert_eq!(state("ok", false), "ok");
        assert_eq!(
            key_values(&[("a", "1".into()), ("long", "2".into())]),
            "  a     1\n  long  2\n"
        );
    }
}
