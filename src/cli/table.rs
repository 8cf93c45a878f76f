//! Aligned plain-text tables for the CLI (`status`, `bench`, `groups list`).
//! The first row is the header; numeric cells are right-aligned, text left.

/// Renders `rows` (header first) with two spaces between columns and a rule
/// under the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = |c: usize| {
        rows.iter()
            .filter_map(|r| r.get(c))
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..cols).map(width).collect();
    let numeric = |s: &str| !s.is_empty() && s.trim_end_matches('%').parse::<f64>().is_ok();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, w) in widths.iter().enumerate() {
            let cell = row.get(c).map(String::as_str).unwrap_or("");
            if c > 0 {
                line.push_str("  ");
            }
            if i > 0 && numeric(cell) {
                line.push_str(&format!("{cell:>w$}"));
            } else {
                line.push_str(&format!("{cell:<w$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if i == 0 {
            let total = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_text_left_and_numbers_right() {
        let rows = vec![
            vec!["name".to_string(), "n".to_string()],
            vec!["a".to_string(), "1000".to_string()],
            vec!["longer".to_string(), "7".to_string()],
        ];
        assert_eq!(
            table(&rows),
            "name    n\n------------\na       1000\nlonger     7\n"
        );
    }
}
