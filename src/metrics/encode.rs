//! The Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! Why not the `prometheus-client` crate: it writes only OpenMetrics text (`# EOF`, counters
//! declared without `_total`, `# UNIT` lines), while node_exporter's textfile collector parses the
//! classic text format and requires every file's HELP/TYPE lines to agree with the other
//! collectors'; and its registry holds long-lived instruments, while most of certrotd's series are
//! a snapshot of the inventory (certificates come and go with every rotation) rendered on demand.
//! What is left to write is escaping and number formatting, below, and `promtool check metrics`
//! judges the result in the tests.

use std::fmt::Write;

/// A metric family's kind, as the `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up (its samples end in `_total`).
    Counter,
    /// Buckets, sum and count.
    Histogram,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a family.
pub fn family(out: &mut String, name: &str, kind: Kind, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {}", kind.word());
}

/// Writes one sample; `labels` is a label set as [`Labels`] builds it (possibly empty).
pub fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    out.push_str(name);
    out.push_str(labels);
    out.push(' ');
    number(out, value);
    out.push('\n');
}

/// Formats a sample value: integers without a fraction (timestamps stay readable), `+Inf`,
/// `-Inf` and `NaN` as the format spells them.
pub fn number(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A label set under construction, `{a="x",b="y"}`, values escaped.
#[derive(Debug, Default, Clone)]
pub struct Labels(String);

impl Labels {
    /// No labels yet.
    pub fn new() -> Labels {
        Labels(String::new())
    }

    /// Adds `name="value"`.
    pub fn with(mut self, name: &str, value: &str) -> Labels {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        self.0.push_str(name);
        self.0.push_str("=\"");
        escape_value(&mut self.0, value);
        self.0.push('"');
        self
    }

    /// Appends labels [`Labels::inner`] encoded (`,a="x",b="y"` or `a="x"`).
    pub fn raw(mut self, encoded: &str) -> Labels {
        let encoded = encoded.trim_start_matches(',');
        if encoded.is_empty() {
            return self;
        }
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        self.0.push_str(encoded);
        self
    }

    /// The labels so far without braces (`a="x",b="y"`), to append to another set with
    /// [`Labels::raw`].
    pub fn inner(self) -> String {
        self.0.trim_start_matches('{').to_owned()
    }

    /// The text, braces closed (empty for no labels).
    pub fn finish(mut self) -> String {
        if !self.0.is_empty() {
            self.0.push('}');
        }
        self.0
    }
}

/// Adds one label to an already finished label set (`{a="x"}` + `le` → `{a="x",le="1"}`).
pub fn extend(labels: &str, name: &str, value: &str) -> String {
    let mut out = String::with_capacity(labels.len() + name.len() + value.len() + 6);
    match labels.strip_suffix('}') {
        Some(open) => {
            out.push_str(open);
            out.push(',');
        }
        None => out.push('{'),
    }
    out.push_str(name);
    out.push_str("=\"");
    escape_value(&mut out, value);
    out.push_str("\"}");
    out
}

/// Label values escape backslash, double quote and line feed.
fn escape_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_extended() {
        let l = Labels::new()
            .with("path", "/a\"b\\c\nd")
            .with("x", "")
            .finish();
        assert_eq!(l, r#"{path="/a\"b\\c\nd",x=""}"#);
        assert_eq!(
            extend(&l, "le", "+Inf"),
            r#"{path="/a\"b\\c\nd",x="",le="+Inf"}"#
        );
        assert_eq!(extend("", "le", "1"), r#"{le="1"}"#);
        assert_eq!(Labels::new().finish(), "");
        let own = Labels::new().with("b", "2").with("c", "3").inner();
        assert_eq!(own, r#"b="2",c="3""#);
        assert_eq!(
            Labels::new().with("a", "1").raw(&own).finish(),
            r#"{a="1",b="2",c="3"}"#
        );
        assert_eq!(Labels::new().raw(&own).finish(), r#"{b="2",c="3"}"#);
    }

    #[test]
    fn numbers() {
        let f = |v: f64| {
            let mut s = String::new();
            number(&mut s, v);
            s
        };
        assert_eq!(f(1_765_000_000.0), "1765000000");
        assert_eq!(f(0.25), "0.25");
        assert_eq!(f(f64::INFINITY), "+Inf");
        assert_eq!(f(-3.0), "-3");
    }
}
