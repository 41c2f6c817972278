//! The Markdown tables of the bench reports, written the one way
//! docs/BENCHMARKS.md shows them: `| a | b |`, a `|---|---|` rule, one line
//! per row, an empty cell as `| |`.

use std::fmt;

/// A Markdown table being built; `Display` writes it, each line ended by a
/// newline.
pub(super) struct Table {
    lines: Vec<String>,
}

impl Table {
    /// A table with these column heads.
    pub(super) fn new<S: AsRef<str>>(head: impl IntoIterator<Item = S>) -> Table {
        let head: Vec<String> = head.into_iter().map(|c| c.as_ref().to_string()).collect();
        let rule = format!("|{}", "---|".repeat(head.len()));
        Table {
            lines: vec![line(head), rule],
        }
    }

    /// Adds a row of cells.
    pub(super) fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.lines.push(line(cells));
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// `| a | b |`; an empty cell is `| |`.
fn line<S: AsRef<str>>(cells: impl IntoIterator<Item = S>) -> String {
    let mut l = "|".to_string();
    for c in cells {
        let c = c.as_ref();
        if c.is_empty() {
            l.push_str(" |");
        } else {
            l.push(' ');
            l.push_str(c);
            l.push_str(" |");
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_as_the_reports_print_it() {
        let mut t = Table::new(["system", "link cut", "SIGKILL"]);
        t.row(["vipd", "468 (459–512)", "459 (448–470)"]);
        t.row(["keepalived", "", "n/a"]);
        assert_eq!(
            t.to_string(),
            "| system | link cut | SIGKILL |\n|---|---|---|\n\
             | vipd | 468 (459–512) | 459 (448–470) |\n| keepalived | | n/a |\n"
        );
    }

    #[test]
    fn the_rule_has_one_dash_run_per_column() {
        let t = Table::new(["a", "b b", "c"]);
        assert_eq!(t.to_string(), "| a | b b | c |\n|---|---|---|\n");
    }
}
