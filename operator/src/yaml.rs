//! YAML in, typed Kubernetes objects out, strictly: serde and k8s-openapi skip fields a type
//! does not know, so a typo in a manifest or spec (`replica: 3`) would pass silently. Here the
//! typed value is written back out and every field of the YAML must be found in it unchanged.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Parses `yaml` into `T`, refusing any field `T` does not know; the error names the fields.
pub fn parse_strict<T: DeserializeOwned + Serialize>(yaml: &str) -> Result<T, String> {
    let raw: Value = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
    let typed: T = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut lost = Vec::new();
    missing_from(&raw, &back, String::new(), &mut lost);
    if lost.is_empty() {
        Ok(typed)
    } else {
        Err(format!("fields unknown to the type: {lost:?}"))
    }
}

/// Paths of `raw` whose value `typed` does not hold (extra fields in `typed`, such as defaults,
/// are fine).
fn missing_from(raw: &Value, typed: &Value, path: String, out: &mut Vec<String>) {
    match (raw, typed) {
        (Value::Object(raw), Value::Object(typed)) => {
            for (key, value) in raw {
                match typed.get(key) {
                    Some(kept) => missing_from(value, kept, format!("{path}.{key}"), out),
                    None => out.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(raw), Value::Array(typed)) if raw.len() == typed.len() => {
            for (i, (value, kept)) in raw.iter().zip(typed).enumerate() {
                missing_from(value, kept, format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (raw, typed) if raw == typed => {}
        (raw, typed) => out.push(format!("{path}: {raw} became {typed}")),
    }
}
