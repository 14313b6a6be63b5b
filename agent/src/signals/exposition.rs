//! A small, strict parser of the Prometheus text exposition format (version 0.0.4, and the
//! OpenMetrics text format's subset of it: `# EOF`, exemplars skipped).
//!
//! Written here rather than taken from a crate: `prometheus-parse` (0.2) is line-lenient
//! and brings `regex`, `chrono` and `itertools` into the agent, whose size budget keeps
//! the regex engine out (see the workspace `tracing-subscriber` note);
//! `openmetrics-parser` brings a `pest` grammar. The format is small and this parser
//! refuses what it does not understand, naming the line.
//!
//! Pure: text in, samples out through a callback (so a scrape keeps only the series it
//! needs). It never allocates more than one sample's labels at a time and stops at
//! `max_series` sample lines.

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

impl Sample<'_> {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why an exposition was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExpositionError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("more than {max} series (signals.<stream>.max_series)")]
    TooManySeries { max: usize },
}

/// What a parse saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseStats {
    /// Sample lines read.
    pub series: usize,
}

const METRIC_TYPES: &[&str] = &[
    "counter",
    "gauge",
    "histogram",
    "summary",
    "untyped",
    "unknown",
    "info",
    "stateset",
    "gaugehistogram",
];

/// Parses `text`, calling `each` for every sample line. Stops with an error at the first
/// line it does not understand or past `max_series` samples.
pub fn parse(
    text: &str,
    max_series: usize,
    mut each: impl FnMut(Sample<'_>),
) -> Result<ParseStats, ExpositionError> {
    let mut stats = ParseStats::default();
    let mut eof_at: Option<usize> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let err = |message: String| ExpositionError::Line {
            line: line_no,
            message,
        };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(at) = eof_at {
            return Err(err(format!("content after `# EOF` on line {at}")));
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            if comment == "EOF" {
                eof_at = Some(line_no);
            } else if let Some(rest) = comment.strip_prefix("TYPE ") {
                let mut words = rest.split_whitespace();
                let (Some(name), Some(kind), None) = (words.next(), words.next(), words.next())
                else {
                    return Err(err("`# TYPE` needs a metric name and a type".into()));
                };
                if !valid_metric_name(name) {
                    return Err(err(format!("`# TYPE`: {name:?} is not a metric name")));
                }
                if !METRIC_TYPES.contains(&kind) {
                    return Err(err(format!("`# TYPE {name}`: unknown type {kind:?}")));
                }
            } else if let Some(rest) = comment.strip_prefix("HELP ") {
                let name = rest.split_whitespace().next().unwrap_or("");
                if !valid_metric_name(name) {
                    return Err(err(format!("`# HELP`: {name:?} is not a metric name")));
                }
            }
            continue;
        }
        if stats.series == max_series {
            return Err(ExpositionError::TooManySeries { max: max_series });
        }
        let sample = sample_line(line).map_err(err)?;
        stats.series += 1;
        each(sample);
    }
    Ok(stats)
}

fn sample_line(line: &str) -> Result<Sample<'_>, String> {
    let name_end = line
        .find(['{', ' ', '\t'])
        .ok_or_else(|| format!("{:?} has no value", shorten(line)))?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("{:?} is not a metric name", shorten(name)));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = label_set(after, &mut labels)?;
    }
    if !rest.starts_with([' ', '\t']) {
        return Err(format!("{name}: expected a space before the value"));
    }
    // OpenMetrics exemplar: ` # {labels} value [timestamp]` after the sample; skipped.
    let rest = match rest.find(" # ") {
        Some(i) => &rest[..i],
        None => rest,
    };
    let mut words = rest.split_whitespace();
    let value = words
        .next()
        .ok_or_else(|| format!("{name}: no value"))
        .and_then(|v| {
            number(v).ok_or_else(|| format!("{name}: {:?} is not a number", shorten(v)))
        })?;
    if let Some(ts) = words.next()
        && number(ts).is_none_or(|t| !t.is_finite())
    {
        return Err(format!(
            "{name}: timestamp {:?} is not a number",
            shorten(ts)
        ));
    }
    if let Some(extra) = words.next() {
        return Err(format!(
            "{name}: unexpected {:?} after the value",
            shorten(extra)
        ));
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Reads `label="value",...}` and returns what follows the closing brace.
fn label_set<'a>(mut s: &'a str, labels: &mut Vec<(&'a str, String)>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let eq = s.find('=').ok_or("a label without `=`")?;
        let name = s[..eq].trim_end_matches([' ', '\t']);
        if !valid_label_name(name) {
            return Err(format!("{:?} is not a label name", shorten(name)));
        }
        let after_eq = s[eq + 1..].trim_start_matches([' ', '\t']);
        let body = after_eq
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name}: value must be in double quotes"))?;
        let mut value = String::new();
        let mut chars = body.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {name}: unterminated value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err(format!("label {name}: bad escape in value")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.iter().any(|(n, _)| *n == name) {
            return Err(format!("label {name} given twice"));
        }
        labels.push((name, value));
        s = body[end + 1..].trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!(
                "label {name}: expected `,` or `}}` after the value"
            ));
        }
    }
}

fn number(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ if s
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn valid_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed sample, owned: name, labels, value.
    type Owned = (String, Vec<(String, String)>, f64);

    fn all(text: &str) -> Result<Vec<Owned>, ExpositionError> {
        let mut out = Vec::new();
        parse(text, 1000, |s| {
            out.push((
                s.name.to_string(),
                s.labels
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.clone()))
                    .collect(),
                s.value,
            ))
        })?;
        Ok(out)
    }

    #[test]
    fn parses_the_documented_example() {
        // From the Prometheus "Exposition formats" page, text format example.
        let text = r#"# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# Escaping in label values:
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9

# Minimalistic line:
metric_without_timestamp_and_labels 12.47

# A weird metric from before the epoch:
something_weird{problem="division by zero"} +Inf -3982045

# A histogram, which has a pretty complex representation in the text format:
# HELP http_request_duration_seconds A histogram of the request duration.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320
"#;
        let s = all(text).unwrap();
        assert_eq!(s.len(), 9);
        assert_eq!(s[0].0, "http_requests_total");
        assert_eq!(
            s[0].1,
            vec![
                ("method".into(), "post".into()),
                ("code".into(), "200".into())
            ]
        );
        assert_eq!(s[1].2, 3.0);
        assert_eq!(s[2].1[0].1, "C:\\DIR\\FILE.TXT");
        assert_eq!(s[2].1[1].1, "Cannot find file:\n\"FILE.TXT\"");
        assert_eq!(s[4].2, f64::INFINITY);
        assert_eq!(s[6].1[0].1, "+Inf");
    }

    #[test]
    fn openmetrics_eof_and_exemplars() {
        let text = "# TYPE a counter\na_total 4 # {trace_id=\"x\"} 1.0\n# EOF\n";
        assert_eq!(all(text).unwrap()[0].2, 4.0);
        let err = all("a 1\n# EOF\nb 2\n").unwrap_err();
        assert_eq!(err.to_string(), "line 3: content after `# EOF` on line 2");
    }

    #[test]
    fn garbage_is_refused_with_its_line() {
        for (text, want) in [
            (
                "<html><body>oops</body></html>",
                "line 1: \"<html><body>oops</body></html>\" has no value",
            ),
            (
                "ok 1\nbad-name 2\n",
                "line 2: \"bad-name\" is not a metric name",
            ),
            (
                "a{x=\"1\" 2\n",
                "line 1: label x: expected `,` or `}` after the value",
            ),
            (
                "a{x=1} 2\n",
                "line 1: label x: value must be in double quotes",
            ),
            ("a{x=\"1} 2\n", "line 1: label x: unterminated value"),
            ("a{x=\"1\",x=\"2\"} 2\n", "line 1: label x given twice"),
            ("a twelve\n", "line 1: a: \"twelve\" is not a number"),
            ("a 1 2 3\n", "line 1: a: unexpected \"3\" after the value"),
            ("a 1 now\n", "line 1: a: timestamp \"now\" is not a number"),
            (
                "# TYPE a countr\n",
                "line 1: `# TYPE a`: unknown type \"countr\"",
            ),
            (
                "a{x=\"1\"}2\n",
                "line 1: a: expected a space before the value",
            ),
        ] {
            assert_eq!(all(text).unwrap_err().to_string(), want, "{text:?}");
        }
    }

    #[test]
    fn stops_past_max_series() {
        let text = "a 1\nb 2\nc 3\n";
        let mut n = 0;
        let err = parse(text, 2, |_| n += 1).unwrap_err();
        assert_eq!(err, ExpositionError::TooManySeries { max: 2 });
        assert_eq!(n, 2);
        assert_eq!(parse(text, 3, |_| ()).unwrap().series, 3);
    }

    #[test]
    fn trailing_comma_spaces_and_crlf_are_accepted() {
        let s = all("a{ x = \"1\" , y=\"2\", } 5\r\n").unwrap();
        assert_eq!(s[0].1.len(), 2);
        assert_eq!(s[0].2, 5.0);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn escape(v: &str) -> String {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        }

        proptest! {
            /// Whatever valid samples an exporter writes (any label value, escapes
            /// included; any finite value) are read back as written.
            #[test]
            fn written_samples_are_read_back(
                samples in prop::collection::vec(
                    (
                        "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
                        prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,10}", any::<String>(), 0..4),
                        any::<f64>().prop_filter("finite", |v| v.is_finite()),
                    ),
                    0..20,
                )
            ) {
                let mut text = String::new();
                for (name, labels, value) in &samples {
                    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                    text.push_str(&format!("{name}{{{}}} {value:?}\n", l.join(",")));
                }
                let read = all(&text).unwrap();
                prop_assert_eq!(read.len(), samples.len());
                for ((name, labels, value), (rn, rl, rv)) in samples.iter().zip(&read) {
                    prop_assert_eq!(name, rn);
                    let want: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    prop_assert_eq!(&want, rl);
                    prop_assert_eq!(value, rv);
                }
            }

            /// Arbitrary text never panics the parser: it is read or refused.
            #[test]
            fn arbitrary_text_is_read_or_refused(text in any::<String>()) {
                let _ = parse(&text, 100, |_| ());
            }
        }
    }
}
