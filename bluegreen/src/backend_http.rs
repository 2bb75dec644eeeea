//! Asking every backend of a pool something at once, the one plain HTTP
//! GET both health probes and load scrapes send, and the warm-up's
//! requests, sent the same way.

use std::{net::SocketAddr, time::Duration};

/// `ask` of each of `backends` at once (one slow backend does not delay
/// the others' answers), in their order.
pub(crate) fn each_backend<T: Send>(
    backends: &[SocketAddr],
    ask: impl Fn(SocketAddr) -> Result<T, String> + Sync,
) -> Vec<Result<T, String>> {
    let ask = &ask;
    std::thread::scope(|scope| {
        let asks: Vec<_> = backends
            .iter()
            .map(|&backend| scope.spawn(move || ask(backend)))
            .collect();
        asks.into_iter()
            .map(|asked| {
                asked
                    .join()
                    .unwrap_or_else(|_| Err("the request panicked".to_owned()))
            })
            .collect()
    })
}

/// One HTTP GET of `path` on `target` that must answer 2xx; returns the
/// body. Shared by health probes and load scrapes, so both speak to a
/// backend the same way (no redirects, one deadline for the whole
/// exchange).
pub(crate) fn http_get(
    target: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<String, String> {
    let url = format!("http://{target}{path}");
    let mut response = agent(timeout)
        .get(&url)
        .call()
        .map_err(|error| format!("HTTP GET {url}: {error}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP GET {url}: status {status}"));
    }
    response
        .body_mut()
        .read_to_string()
        .map_err(|error| format!("HTTP GET {url}: {error}"))
}

/// One HTTP GET of `url` with `query` parameters, whatever its status:
/// the status and the body, for an API that explains a refusal in it.
pub(crate) fn http_get_answer(
    url: &str,
    query: &[(&str, &str)],
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut request = agent(timeout).get(url);
    for (name, value) in query {
        request = request.query(*name, *value);
    }
    let mut response = request
        .call()
        .map_err(|error| format!("HTTP GET {url}: {error}"))?;
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|error| format!("HTTP GET {url}: {error}"))?;
    Ok((response.status().as_u16(), body))
}

/// The agent every request here goes through: no redirects (a backend
/// answers for itself), one deadline for the whole exchange, and any
/// status returned rather than turned into an error.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// One HTTP request of `method` to `path` on `target`, with `body` as
/// JSON when given; returns the status once the answer is read whole.
pub(crate) fn http_status(
    target: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<u16, String> {
    let url = format!("http://{target}{path}");
    let failed = |error: &dyn std::fmt::Display| format!("HTTP {method} {url}: {error}");
    let request = ureq::http::Request::builder().method(method).uri(&url);
    let answer = match body {
        Some(body) => request
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .map(|request| agent(timeout).run(request)),
        None => request.body(()).map(|request| agent(timeout).run(request)),
    };
    let mut response = answer
        .map_err(|error| failed(&error))?
        .map_err(|error| failed(&error))?;
    response
        .body_mut()
        .read_to_vec()
        .map_err(|error| failed(&error))?;
    Ok(response.status().as_u16())
}
