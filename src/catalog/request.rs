//! Arguments → the HTTP request a tool sends upstream.

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Map, Value};

use super::template::{ArgError, Template};
use super::{HeaderSource, HttpTool};

pub use crate::upstream::UpstreamRequest;

/// Why a request could not be built from these arguments.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildError {
    #[error("invalid arguments: {0}")]
    Arguments(String),
    #[error(
        "this tool needs the environment variable {0}, which is not set for tollgate; \
         the owner must set it in the MCP host's configuration"
    )]
    MissingEnv(String),
}

impl From<ArgError> for BuildError {
    fn from(e: ArgError) -> Self {
        BuildError::Arguments(e.to_string())
    }
}

impl HttpTool {
    /// Builds the request for validated arguments.
    pub fn build_request(&self, args: &Map<String, Value>) -> Result<UpstreamRequest, BuildError> {
        let url = self.url.render(args, &self.query)?;
        let mut headers = HeaderMap::new();
        for (name, source) in &self.headers {
            match source {
                HeaderSource::Ready(value) => {
                    headers.insert(name.clone(), value.clone());
                }
                HeaderSource::MissingEnv(var) => return Err(BuildError::MissingEnv(var.clone())),
            }
        }
        let body = match &self.body {
            None => None,
            Some(template) => {
                let value = fill_body(template, args)?.unwrap_or(Value::Object(Map::new()));
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Some(serde_json::to_vec(&value).map_err(|e| BuildError::Arguments(e.to_string()))?)
            }
        };
        Ok(UpstreamRequest {
            method: self.method.clone(),
            url,
            headers,
            body,
        })
    }
}

/// Fills a JSON body template. A string that is exactly `"{name}"` takes the argument's JSON
/// value; other strings interpolate text; a field whose argument is absent is left out.
fn fill_body(template: &Value, args: &Map<String, Value>) -> Result<Option<Value>, ArgError> {
    Ok(match template {
        Value::String(text) => {
            let t = Template::parse(text).map_err(|e| ArgError {
                name: String::new(),
                reason: e.to_string(),
            })?;
            match t.sole_arg() {
                Some(name) => args.get(name).filter(|v| !v.is_null()).cloned(),
                None => t.render(args, str::to_owned)?.map(Value::String),
            }
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                if let Some(v) = fill_body(item, args)? {
                    out.push(v);
                }
            }
            Some(Value::Array(out))
        }
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, item) in map {
                if let Some(v) = fill_body(item, args)? {
                    out.insert(key.clone(), v);
                }
            }
            Some(Value::Object(out))
        }
        other => Some(other.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn body_keeps_json_types_and_drops_absent_fields() {
        let template =
            json!({"query": "{q}", "n": "{n}", "lang": "{lang}", "label": "q={q}", "fixed": true});
        let args = json!({"q": "rust", "n": 5}).as_object().cloned().unwrap();
        let body = fill_body(&template, &args).unwrap().unwrap();
        assert_eq!(
            body,
            json!({"query": "rust", "n": 5, "label": "q=rust", "fixed": true})
        );
    }
}
