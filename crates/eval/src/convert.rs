//! Values between JSON (collectors, files, the API) and rhai.

use rhai::Dynamic;

/// A rhai value as JSON.
pub fn to_json(v: &Dynamic) -> serde_json::Value {
    use serde_json::Value;
    if v.is_unit() {
        return Value::Null;
    }
    if let Some(b) = v.clone().try_cast::<bool>() {
        return Value::Bool(b);
    }
    if let Some(i) = v.clone().try_cast::<i64>() {
        return Value::from(i);
    }
    if let Some(f) = v.clone().try_cast::<f64>() {
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null);
    }
    if let Ok(s) = v.clone().into_immutable_string() {
        return Value::String(s.to_string());
    }
    if let Some(c) = v.clone().try_cast::<char>() {
        return Value::String(c.to_string());
    }
    if let Some(a) = v.clone().try_cast::<rhai::Array>() {
        return Value::Array(a.iter().map(to_json).collect());
    }
    if let Some(m) = v.clone().try_cast::<rhai::Map>() {
        return Value::Object(m.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect());
    }
    Value::String(v.to_string())
}

/// JSON into a rhai value (for function results built from files).
pub fn from_json(v: &serde_json::Value) -> Dynamic {
    use serde_json::Value;
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Dynamic::from(i),
            (None, Some(f)) => Dynamic::from(f),
            _ => Dynamic::UNIT,
        },
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(a) => Dynamic::from(a.iter().map(from_json).collect::<rhai::Array>()),
        Value::Object(m) => Dynamic::from(
            m.iter()
                .map(|(k, v)| (k.as_str().into(), from_json(v)))
                .collect::<rhai::Map>(),
        ),
    }
}
