//! Pools as the config file writes them, read into [`PoolSpec`]s.

use crate::{
    endpoint::parse_endpoint,
    pool::{BackendSpec, PoolSpec, WEIGHTS},
};

/// A pool as the config file may write it: `"addr:port"`, a list of them,
/// or a list of `{ addr = "...", weight = N }` tables (strings and tables
/// may be mixed).
pub(super) fn from_toml(value: &toml::Value) -> Result<PoolSpec, String> {
    let expected = "expected \"ADDR:PORT\", a list of them, or a list of { addr = \"ADDR:PORT\", weight = N } tables";
    let backends = match value {
        toml::Value::String(_) => vec![backend_from_toml(value)?],
        toml::Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(index, item)| {
                backend_from_toml(item).map_err(|error| format!("backend {}: {error}", index + 1))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(expected.to_owned()),
    };
    Ok(PoolSpec::new(backends))
}

fn backend_from_toml(value: &toml::Value) -> Result<BackendSpec, String> {
    let endpoint = |text: &str| parse_endpoint(text).map_err(|error| error.to_string());
    match value {
        toml::Value::String(text) => endpoint(text).map(BackendSpec::new),
        toml::Value::Table(table) => {
            if let Some(unknown) = table
                .keys()
                .find(|key| !matches!(key.as_str(), "addr" | "weight"))
            {
                return Err(format!(
                    "unknown key {unknown:?}: a backend has addr and weight"
                ));
            }
            let addr = match table.get("addr") {
                Some(toml::Value::String(text)) => endpoint(text)?,
                Some(_) => return Err("addr must be a string \"ADDR:PORT\"".to_owned()),
                None => return Err("addr is missing".to_owned()),
            };
            let weight = match table.get("weight") {
                None => BackendSpec::new(addr).weight,
                Some(toml::Value::Integer(weight)) => u32::try_from(*weight)
                    .ok()
                    .filter(|weight| WEIGHTS.contains(weight))
                    .ok_or_else(|| format!("{addr}: weight {weight} is outside 1..=100"))?,
                Some(_) => return Err(format!("{addr}: weight must be a number from 1 to 100")),
            };
            Ok(BackendSpec {
                weight,
                ..BackendSpec::new(addr)
            })
        }
        _ => Err("a backend is \"ADDR:PORT\" or { addr = \"ADDR:PORT\", weight = N }".to_owned()),
    }
}

#[cfg(test)]
mod tests;
