//! Reading the Prometheus text format that backends expose on `/metrics`:
//! each sample line as its metric name, its labels and its value. Strict,
//! as Prometheus is when it scrapes: a line that is not a sample, a
//! comment or blank makes the whole text unreadable, so a truncated or
//! garbled answer is never taken for a backend with fewer requests.

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

impl Sample<'_> {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(label, _)| *label == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Every sample of `text`, in order; the error names the first line that
/// is not one.
pub(crate) fn samples(text: &str) -> Result<Vec<Sample<'_>>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let line = line.trim_start();
            !line.is_empty() && !line.starts_with('#')
        })
        .map(|(at, line)| {
            sample(line.trim()).ok_or_else(|| {
                let shown: String = line.chars().take(80).collect();
                format!("line {} is not a metric sample: {shown:?}", at + 1)
            })
        })
        .collect()
}

fn sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        rest = read_labels(inside, &mut labels)?;
    }
    // A value, then an optional timestamp in milliseconds.
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next()?)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Reads `label="value",...}` into `labels`; returns what follows the `}`.
fn read_labels<'a>(mut rest: &'a str, labels: &mut Vec<(&'a str, String)>) -> Option<&'a str> {
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Some(after);
        }
        let name_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
        let name = &rest[..name_end];
        rest = rest[name_end..].trim_start().strip_prefix('=')?;
        rest = rest.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (at, '"') => break at,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    escaped => value.push(escaped),
                },
                (_, c) => value.push(c),
            }
        };
        if name.is_empty() {
            return None;
        }
        labels.push((name, value));
        rest = rest[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_keep_names_with_colons_labels_and_special_values() {
        let text = "# HELP vllm:e2e seconds\n# TYPE vllm:e2e histogram\n\
            vllm:e2e_bucket{le=\"0.5\",model_name=\"m, \\\"q\\\"\"} 3 1700000000000\n\
            vllm:e2e_bucket{le=\"+Inf\"} 4\n\nup 1\nlate -Inf\n";
        let samples = samples(text).expect("valid exposition");
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[0].name, "vllm:e2e_bucket");
        assert_eq!(samples[0].label("le"), Some("0.5"));
        assert_eq!(samples[0].label("model_name"), Some("m, \"q\""));
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].label("le"), Some("+Inf"));
        assert_eq!(
            samples[2],
            Sample {
                name: "up",
                labels: Vec::new(),
                value: 1.0
            }
        );
        assert_eq!(samples[3].value, f64::NEG_INFINITY);
    }

    #[test]
    fn a_line_that_is_not_a_sample_makes_the_text_unreadable() {
        for (text, line) in [
            ("up 1\nup{le=\"1\" 2\n", 2),
            ("up one\n", 1),
            ("ok 1\n\n{le=\"1\"} 2\n", 3),
            ("up 1 2 3\n", 1),
            ("up{le=\"unterminated} 1\n", 1),
        ] {
            let error = samples(text).expect_err(text);
            assert!(
                error.starts_with(&format!("line {line} ")),
                "{text:?}: {error}"
            );
        }
    }
}
