//! Templates with `{argument}` placeholders, as used in tool URLs, query values and JSON bodies.
//!
//! A URL template fixes the scheme, host and port in its literal text: a placeholder may appear
//! only after the authority, and every value is percent-encoded (all but the RFC 3986
//! unreserved characters), so no argument can move a request to another origin, add a query
//! parameter, or walk up the path with `..`.

use std::collections::BTreeSet;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use url::Url;

/// Everything except `A-Z a-z 0-9 - . _ ~` is encoded.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Arg(String),
}

/// Text with `{name}` placeholders; `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// Why a template could not be read, or could not be filled in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed '{{' at byte {0}; write '{{{{' for a literal brace")]
    Unclosed(usize),
    #[error(
        "'{{{0}}}' is not a placeholder: names are letters, digits and '_', not starting with a digit"
    )]
    BadName(String),
    #[error("stray '}}' at byte {0}; write '}}}}' for a literal brace")]
    StrayClose(usize),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'{' if bytes.get(i + 1) == Some(&b'{') => {
                    literal.push('{');
                    i += 2;
                }
                b'}' if bytes.get(i + 1) == Some(&b'}') => {
                    literal.push('}');
                    i += 2;
                }
                b'{' => {
                    let close = text[i..].find('}').ok_or(TemplateError::Unclosed(i))? + i;
                    let name = &text[i + 1..close];
                    if !is_name(name) {
                        return Err(TemplateError::BadName(name.to_owned()));
                    }
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Arg(name.to_owned()));
                    i = close + 1;
                }
                b'}' => return Err(TemplateError::StrayClose(i)),
                _ => {
                    // Copy one whole UTF-8 character.
                    let ch = text[i..].chars().next().unwrap_or_default();
                    literal.push(ch);
                    i += ch.len_utf8().max(1);
                }
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template { segments })
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The argument names this template refers to.
    pub fn args(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Arg(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// `Some(name)` when the whole template is one placeholder (`"{days}"`): in a JSON body its
    /// value keeps its JSON type instead of becoming text.
    pub fn sole_arg(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [Segment::Arg(name)] => Some(name),
            _ => None,
        }
    }

    /// Fills in the placeholders, each value passed through `encode`. `Ok(None)` when an
    /// argument is absent.
    pub fn render(
        &self,
        args: &serde_json::Map<String, Value>,
        encode: impl Fn(&str) -> String,
    ) -> Result<Option<String>, ArgError> {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Arg(name) => match args.get(name) {
                    None | Some(Value::Null) => return Ok(None),
                    Some(value) => out.push_str(&encode(&value_text(name, value)?)),
                },
            }
        }
        Ok(Some(out))
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An argument value that cannot be placed where the template puts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("argument `{name}` {reason}")]
pub struct ArgError {
    pub name: String,
    pub reason: String,
}

/// The text form of an argument value: strings as they are, numbers and booleans as JSON
/// writes them, arrays of those joined with commas.
fn value_text(name: &str, value: &Value) -> Result<String, ArgError> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match value {
        Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join(",")),
        other => scalar(other),
    }
    .ok_or_else(|| ArgError {
        name: name.to_owned(),
        reason: "is an object or nested array; it cannot be placed in a URL".to_owned(),
    })
}

/// Percent-encodes all but the unreserved characters.
pub fn encode_strict(text: &str) -> String {
    utf8_percent_encode(text, STRICT).to_string()
}

/// A tool's URL: a fixed origin, a path template and query pairs whose values are templates.
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    /// `scheme://host[:port]` exactly as the tool definition fixes it.
    origin: url::Origin,
    /// Everything before `?`: the origin's literal text and the path.
    path: Template,
    /// `key=value` pairs after `?`; a pair whose placeholders are absent is left out.
    query: Vec<(String, Template)>,
    /// Names used in the path (these must always be present).
    path_args: BTreeSet<String>,
}

/// Why a URL template is not acceptable in a tool definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlTemplateError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("not a valid URL once filled in: {0}")]
    Invalid(String),
    #[error("scheme must be http or https, not {0:?}")]
    Scheme(String),
    #[error(
        "placeholders may not appear in the scheme, host or port; fix the origin in the literal text (\"https://api.example.com/...\")"
    )]
    PlaceholderInOrigin,
    #[error(
        "user names and passwords in URLs are not allowed; send credentials in `headers` from an environment variable"
    )]
    Credentials,
    #[error("a fragment ('#') is never sent to the server; remove it")]
    Fragment,
    #[error("in the query, placeholders may appear only in values, as in \"?city={{city}}\"")]
    PlaceholderInQueryKey,
}

impl UrlTemplate {
    pub fn parse(text: &str) -> Result<UrlTemplate, UrlTemplateError> {
        let whole = Template::parse(text)?;
        // The literal text before the first placeholder must already contain the whole
        // authority, ended by '/' or '?'.
        let prefix = match whole.segments.first() {
            Some(Segment::Literal(text)) => text.as_str(),
            _ => "",
        };
        let has_placeholder = whole.args().next().is_some();
        if has_placeholder {
            let after_scheme = prefix.find("://").map(|i| &prefix[i + 3..]);
            match after_scheme {
                Some(rest) if rest.contains(['/', '?']) => {}
                _ => return Err(UrlTemplateError::PlaceholderInOrigin),
            }
        }
        // Fill every placeholder with a harmless value to learn the fixed origin.
        let sample: String = whole
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(t) => t.as_str(),
                Segment::Arg(_) => "x",
            })
            .collect();
        let url = Url::parse(&sample).map_err(|e| UrlTemplateError::Invalid(e.to_string()))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(UrlTemplateError::Scheme(url.scheme().to_owned()));
        }
        if url.host().is_none() {
            return Err(UrlTemplateError::Invalid("no host".to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlTemplateError::Credentials);
        }
        if sample.contains('#') {
            return Err(UrlTemplateError::Fragment);
        }

        // Split the segments at the first literal '?'.
        let mut path = Vec::new();
        let mut query_segments: Option<Vec<Segment>> = None;
        for segment in whole.segments {
            match (&mut query_segments, segment) {
                (None, Segment::Literal(text)) if text.contains('?') => {
                    let (before, after) = text.split_once('?').unwrap_or((&text, ""));
                    if !before.is_empty() {
                        path.push(Segment::Literal(before.to_owned()));
                    }
                    let mut rest = Vec::new();
                    if !after.is_empty() {
                        rest.push(Segment::Literal(after.to_owned()));
                    }
                    query_segments = Some(rest);
                }
                (None, segment) => path.push(segment),
                (Some(rest), segment) => rest.push(segment),
            }
        }
        let path = Template { segments: path };
        let query = split_query(query_segments.unwrap_or_default())?;
        let path_args = path.args().map(str::to_owned).collect();
        Ok(UrlTemplate {
            origin: url.origin(),
            path,
            query,
            path_args,
        })
    }

    /// Every argument name the URL uses.
    pub fn args(&self) -> impl Iterator<Item = &str> {
        self.path
            .args()
            .chain(self.query.iter().flat_map(|(_, t)| t.args()))
    }

    /// Argument names used in the path: they must be required by the input schema.
    pub fn path_args(&self) -> &BTreeSet<String> {
        &self.path_args
    }

    /// The port requests go to (the scheme's default when the URL names none).
    pub fn port(&self) -> u16 {
        match &self.origin {
            url::Origin::Tuple(_, _, port) => *port,
            url::Origin::Opaque(_) => 0,
        }
    }

    pub fn origin(&self) -> &url::Origin {
        &self.origin
    }

    /// The host as written in the definition (for tables and allowlists).
    pub fn host(&self) -> String {
        match &self.origin {
            url::Origin::Tuple(_, host, _) => host.to_string(),
            url::Origin::Opaque(_) => String::new(),
        }
    }

    /// Builds the URL for these arguments, with `extra` query pairs appended.
    pub fn render(
        &self,
        args: &serde_json::Map<String, Value>,
        extra: &[(String, Template)],
    ) -> Result<Url, ArgError> {
        // '.' and '..' survive encoding (even as %2E) and would be read as path steps.
        for name in &self.path_args {
            if let Some(Value::String(v)) = args.get(name)
                && (v == "." || v == "..")
            {
                return Err(ArgError {
                    name: name.clone(),
                    reason: "may not be \".\" or \"..\": it is a segment of the URL path"
                        .to_owned(),
                });
            }
        }
        let encode_path = encode_strict;
        let mut text = self.path.render(args, encode_path)?.ok_or_else(|| {
            let missing = self.path_args.iter().find(|n| !args.contains_key(*n));
            ArgError {
                name: missing.cloned().unwrap_or_default(),
                reason: "is required: the URL path uses it".to_owned(),
            }
        })?;
        let mut first = true;
        for (key, value) in self.query.iter().chain(extra) {
            if let Some(value) = value.render(args, encode_strict)? {
                text.push(if first { '?' } else { '&' });
                first = false;
                text.push_str(&encode_strict(key));
                text.push('=');
                text.push_str(&value);
            }
        }
        let url = Url::parse(&text).map_err(|e| ArgError {
            name: self.path_args.iter().next().cloned().unwrap_or_default(),
            reason: format!("makes an invalid URL: {e}"),
        })?;
        // Defence in depth: encoding already makes this impossible.
        if url.origin() != self.origin {
            return Err(ArgError {
                name: String::new(),
                reason: "would change the URL's origin; refused".to_owned(),
            });
        }
        Ok(url)
    }
}

/// Splits query segments at literal '&' and '=' into (key, value template) pairs.
fn split_query(segments: Vec<Segment>) -> Result<Vec<(String, Template)>, UrlTemplateError> {
    let mut pairs: Vec<Vec<Segment>> = vec![Vec::new()];
    for segment in segments {
        match segment {
            Segment::Literal(text) => {
                for (i, piece) in text.split('&').enumerate() {
                    if i > 0 {
                        pairs.push(Vec::new());
                    }
                    if !piece.is_empty()
                        && let Some(last) = pairs.last_mut()
                    {
                        last.push(Segment::Literal(piece.to_owned()));
                    }
                }
            }
            arg => {
                if let Some(last) = pairs.last_mut() {
                    last.push(arg);
                }
            }
        }
    }
    let mut out = Vec::new();
    for pair in pairs.into_iter().filter(|p| !p.is_empty()) {
        let Some(Segment::Literal(first)) = pair.first().cloned() else {
            return Err(UrlTemplateError::PlaceholderInQueryKey);
        };
        let Some((key, value_start)) = first.split_once('=') else {
            if pair.len() > 1 {
                return Err(UrlTemplateError::PlaceholderInQueryKey);
            }
            out.push((decode(&first), Template { segments: vec![] }));
            continue;
        };
        let mut value = Vec::new();
        if !value_start.is_empty() {
            value.push(Segment::Literal(decode(value_start)));
        }
        value.extend(pair.into_iter().skip(1).map(|s| match s {
            Segment::Literal(t) => Segment::Literal(decode(&t)),
            arg => arg,
        }));
        out.push((decode(key), Template { segments: value }));
    }
    Ok(out)
}

/// Literal query text in a definition may already be percent-encoded; it is decoded here and
/// encoded once on the way out.
fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn fills_path_and_query_with_encoded_values() {
        let t = UrlTemplate::parse(
            "https://api.example.com/v1/{kind}/weather?city={city}&units=metric",
        )
        .unwrap();
        let url = t
            .render(
                &args(json!({"kind": "a b/c", "city": "São Paulo&x=1"})),
                &[],
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://api.example.com/v1/a%20b%2Fc/weather?city=S%C3%A3o%20Paulo%26x%3D1&units=metric"
        );
    }

    #[test]
    fn leaves_out_query_pairs_of_absent_arguments() {
        let t = UrlTemplate::parse("https://api.example.com/s?q={q}&lang={lang}").unwrap();
        let url = t.render(&args(json!({"q": "rust"})), &[]).unwrap();
        assert_eq!(url.as_str(), "https://api.example.com/s?q=rust");
    }

    #[test]
    fn refuses_placeholders_in_the_origin() {
        for bad in [
            "https://{host}/x",
            "https://api.example.com:{port}/x",
            "{scheme}://api.example.com/x",
            "https://api.{zone}.com/x",
        ] {
            assert_eq!(
                UrlTemplate::parse(bad).unwrap_err(),
                UrlTemplateError::PlaceholderInOrigin,
                "{bad}"
            );
        }
    }

    #[test]
    fn values_cannot_change_origin_or_climb_the_path() {
        let t = UrlTemplate::parse("https://api.example.com/v1/users/{id}").unwrap();
        assert!(t.render(&args(json!({ "id": ".." })), &[]).is_err());
        assert!(t.render(&args(json!({ "id": "." })), &[]).is_err());
        for evil in [
            "...",
            "@evil.com",
            "//evil.com",
            "x?admin=1",
            "x#y",
            "%2e%2e",
            "../x",
        ] {
            let url = t.render(&args(json!({ "id": evil })), &[]).unwrap();
            assert_eq!(url.host_str(), Some("api.example.com"));
            assert!(url.path().starts_with("/v1/users/"), "{evil} -> {url}");
            assert!(url.query().is_none(), "{evil} -> {url}");
        }
    }

    #[test]
    fn refuses_other_schemes_and_credentials() {
        assert!(matches!(
            UrlTemplate::parse("ftp://x.com/"),
            Err(UrlTemplateError::Scheme(_))
        ));
        assert_eq!(
            UrlTemplate::parse("https://u:p@x.com/").unwrap_err(),
            UrlTemplateError::Credentials
        );
    }

    #[test]
    fn literal_braces_and_bad_names() {
        let t = Template::parse("a{{b}}c{d}").unwrap();
        assert_eq!(t.args().collect::<Vec<_>>(), ["d"]);
        assert!(matches!(
            Template::parse("{1x}"),
            Err(TemplateError::BadName(_))
        ));
        assert!(matches!(
            Template::parse("{x"),
            Err(TemplateError::Unclosed(0))
        ));
    }

    #[test]
    fn objects_cannot_go_into_a_url() {
        let t = UrlTemplate::parse("https://api.example.com/x?f={f}").unwrap();
        let err = t.render(&args(json!({"f": {"a": 1}})), &[]).unwrap_err();
        assert_eq!(err.name, "f");
    }
}
