//! Prints diagnostics the way a compiler does: the message, the location, the source
//! line with a caret under the column, and the hint. Colour only on a terminal.

use console::Style;
use pipelines::{Diagnostic, Severity};

/// Longest source line quoted under a diagnostic, in bytes.
const MAX_SHOWN_LINE: usize = 400;

/// Renders `diag`; `source` is the text of the file it points into, when we have it.
pub fn render(diag: &Diagnostic, source: Option<&str>, colour: bool) -> String {
    let style = |s: Style| s.force_styling(colour);
    let (label, label_style) = match diag.severity {
        Severity::Error => ("error", style(Style::new().red().bold())),
        Severity::Warning => ("warning", style(Style::new().yellow().bold())),
    };
    let bold = style(Style::new().bold());
    let blue = style(Style::new().blue().bold());
    let mut out = format!(
        "{}{} {}\n",
        label_style.apply_to(format!("{label}[{}]", diag.code)),
        bold.apply_to(":"),
        bold.apply_to(&diag.message),
    );
    let gutter = diag.line.to_string().len();
    out += &format!(
        "{:gutter$}{} {}:{}:{}\n",
        "",
        blue.apply_to("-->"),
        diag.file,
        diag.line,
        diag.column
    );
    // A line longer than a screen or two (minified JSON, an oversized file) is not shown.
    let line_text = source
        .and_then(|s| s.lines().nth(diag.line.checked_sub(1)?))
        .filter(|l| l.len() <= MAX_SHOWN_LINE);
    if let Some(text) = line_text {
        let pad = " ".repeat(gutter);
        let caret_at: usize = text
            .chars()
            .take(diag.column.saturating_sub(1))
            .map(|c| if c == '\t' { 4 } else { 1 })
            .sum();
        out += &format!("{pad} {}\n", blue.apply_to("|"));
        out += &format!(
            "{} {} {}\n",
            blue.apply_to(diag.line),
            blue.apply_to("|"),
            text.replace('\t', "    ")
        );
        out += &format!(
            "{pad} {} {}{}\n",
            blue.apply_to("|"),
            " ".repeat(caret_at),
            label_style.apply_to("^")
        );
    }
    if let Some(hint) = &diag.hint {
        out += &format!("{:gutter$} {} {}\n", "", blue.apply_to("= hint:"), hint);
    }
    out
}
