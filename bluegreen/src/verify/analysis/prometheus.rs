//! An instant query against a Prometheus server's HTTP API
//! (`/api/v1/query`), reduced to the one number an analysis judges.

use std::time::Duration;

use serde::Deserialize;

use crate::backend_http::http_get_answer;

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<Series>),
    Scalar(SampleValue),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Series {
    value: SampleValue,
}

/// `[unix seconds, "value"]`: Prometheus sends values as strings so that
/// NaN and the infinities survive JSON.
#[derive(Deserialize)]
struct SampleValue(serde::de::IgnoredAny, String);

/// The value `query` gives now on the server at `url`: it must give one
/// number (a scalar, or a vector of one series). An empty vector, or NaN
/// (a ratio of two zero rates), is no data; every failure says what the
/// server or the connection said.
pub(super) fn instant_value(url: &str, query: &str, timeout: Duration) -> Result<f64, String> {
    let endpoint = format!("{}/api/v1/query", url.trim_end_matches('/'));
    let (status, body) = http_get_answer(&endpoint, &[("query", query)], timeout)?;
    let answer: Answer = serde_json::from_str(&body).map_err(|error| {
        format!(
            "{endpoint} answered {status} with something that is not the query API's JSON ({error})"
        )
    })?;
    if answer.status != "success" {
        return Err(format!(
            "Prometheus refused the query ({}): {}",
            answer.error_type.as_deref().unwrap_or("error"),
            answer.error.as_deref().unwrap_or("no reason given")
        ));
    }
    let value = match answer.data {
        Some(Data::Scalar(value)) => value,
        Some(Data::Vector(mut series)) => match series.len() {
            0 => return Err("the query matched no series".to_owned()),
            1 => series.remove(0).value,
            many => {
                return Err(format!(
                    "the query gave {many} series; it must give one (aggregate it, e.g. with sum())"
                ));
            }
        },
        Some(Data::Matrix(_) | Data::String(_)) | None => {
            return Err(
                "the query must give a number or one series, not a range or a string".to_owned(),
            );
        }
    };
    let number: f64 = match value.1.as_str() {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other
            .parse()
            .map_err(|_| format!("Prometheus gave {other:?}, not a number"))?,
    };
    if number.is_nan() {
        return Err("the query gave NaN (nothing observed: a ratio of two empty rates)".to_owned());
    }
    Ok(number)
}
