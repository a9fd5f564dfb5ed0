//! Character positions → line/column, for places inside a scalar (expressions).

use crate::diagnostic::Pos;

/// The file's text as characters (the YAML loader's markers count characters).
pub(crate) struct Source {
    chars: Vec<char>,
    line_starts: Vec<usize>,
}

impl Source {
    pub fn new(text: &str) -> Self {
        let chars: Vec<char> = text.chars().collect();
        let mut line_starts = vec![0];
        for (i, c) in chars.iter().enumerate() {
            if *c == '\n' {
                line_starts.push(i + 1);
            }
        }
        Source { chars, line_starts }
    }

    pub fn pos_of_char(&self, index: usize) -> Pos {
        let line = self.line_starts.partition_point(|&s| s <= index).max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        Pos {
            line,
            column: index.saturating_sub(start) + 1,
        }
    }

    /// Position of the `occurrence`-th (0-based) `${{` at or after char `from`: the
    /// scalar's text maps one-to-one onto the file except for escapes, which cannot
    /// produce `${{`, so counting occurrences finds the right one even in block scalars.
    pub fn find_expr(&self, from: usize, occurrence: usize) -> Option<Pos> {
        let mut seen = 0;
        let mut i = from;
        while i + 2 < self.chars.len() {
            if self.chars.get(i..i + 3) == Some(&['$', '{', '{'][..]) {
                if seen == occurrence {
                    return Some(self.pos_of_char(i));
                }
                seen += 1;
                i += 3;
            } else {
                i += 1;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let s = Source::new("ab\ncd ${{ x }}\n  ${{ y }}");
        assert_eq!(s.pos_of_char(0), Pos { line: 1, column: 1 });
        assert_eq!(s.pos_of_char(3), Pos { line: 2, column: 1 });
        assert_eq!(s.find_expr(0, 0), Some(Pos { line: 2, column: 4 }));
        assert_eq!(s.find_expr(0, 1), Some(Pos { line: 3, column: 3 }));
        assert_eq!(s.find_expr(0, 2), None);
    }
}
