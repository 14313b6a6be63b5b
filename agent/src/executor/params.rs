//! Typed access to a release's free-form `install` parameters.
//!
//! Every accessor names the key in its error; an absent key is `None`, a key of the wrong
//! type is an error (never silently ignored).

use std::collections::BTreeMap;

use serde_json::Value;

use super::ExecError;
use crate::readiness::CommandLine;

/// A release's `install` map.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a>(&'a BTreeMap<String, Value>);

impl<'a> Params<'a> {
    pub fn new(map: &'a BTreeMap<String, Value>) -> Params<'a> {
        Params(map)
    }

    fn bad(key: &str, message: impl Into<String>) -> ExecError {
        ExecError::BadParams {
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A string parameter.
    pub fn str(&self, key: &str) -> Result<Option<&'a str>, ExecError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(Self::bad(key, "expected a string")),
        }
    }

    /// A non-negative integer parameter.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, ExecError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| Self::bad(key, "expected a non-negative integer")),
        }
    }

    /// A command line parameter (a string for `/bin/sh -c`, or a list of strings).
    pub fn command(&self, key: &str) -> Result<Option<CommandLine>, ExecError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CommandLine::from_json(v)
                .map(Some)
                .map_err(|m| Self::bad(key, m)),
        }
    }
}

/// Checks that `name` is a single, plain path component (no `/`, not `.`/`..`, no NUL).
pub(crate) fn safe_component(key: &str, name: &str) -> Result<(), ExecError> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.starts_with('.')
        || name.len() > 200
    {
        return Err(ExecError::BadParams {
            key: key.to_string(),
            message: format!("{name:?} is not a plain file name"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_name_the_key() {
        let map: BTreeMap<String, Value> = serde_json::from_value(serde_json::json!({
            "format": 3, "verify_period_secs": "ten", "restart_command": ["systemctl", "restart", "pos"]
        }))
        .unwrap();
        let p = Params::new(&map);
        assert!(p.str("format").unwrap_err().to_string().contains("format"));
        assert!(p.u64("verify_period_secs").is_err());
        assert!(p.command("restart_command").unwrap().is_some());
        assert_eq!(p.str("missing").unwrap(), None);
    }

    #[test]
    fn components_must_be_plain() {
        for bad in ["", ".", "..", "a/b", ".hidden"] {
            assert!(safe_component("k", bad).is_err(), "{bad}");
        }
        assert!(safe_component("k", "pos-2.4.0").is_ok());
    }
}
