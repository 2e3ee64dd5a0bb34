//! A JSON schema check for the keywords kira's output schemas use (type,
//! properties, required, additionalProperties, enum, const, anyOf,
//! minimum, maximum, maxLength), written for these tests so that what the
//! constrained model writes is checked by something other than the
//! library that constrained it.

use serde_json::Value;

/// Why `v` does not match `schema`, or `Ok` when it does.
pub fn check(v: &Value, schema: &Value) -> Result<(), String> {
    check_at("$", v, schema)
}

fn check_at(at: &str, v: &Value, schema: &Value) -> Result<(), String> {
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        let errors: Vec<String> = options
            .iter()
            .filter_map(|o| check_at(at, v, o).err())
            .collect();
        if errors.len() == options.len() {
            return Err(format!("{at}: matches none of anyOf: {errors:?}"));
        }
    }
    if let Some(c) = schema.get("const")
        && c != v
    {
        return Err(format!("{at}: {v} is not the const {c}"));
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        return Err(format!("{at}: {v} is not one of {e:?}"));
    }
    match schema.get("type").and_then(Value::as_str) {
        None => {}
        Some("object") => {
            let o = v.as_object().ok_or(format!("{at}: {v} is not an object"))?;
            let props = schema.get("properties").and_then(Value::as_object);
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !o.contains_key(r) {
                    return Err(format!("{at}: required {r} is missing in {v}"));
                }
            }
            for (k, x) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => check_at(&format!("{at}.{k}"), x, s)?,
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        return Err(format!("{at}: {k} is not allowed"));
                    }
                    None => {}
                }
            }
        }
        Some("string") => {
            let s = v.as_str().ok_or(format!("{at}: {v} is not a string"))?;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && s.chars().count() as u64 > max
            {
                return Err(format!("{at}: longer than {max}"));
            }
        }
        Some(t @ ("number" | "integer")) => {
            let x = v.as_f64().ok_or(format!("{at}: {v} is not a number"))?;
            if t == "integer" && !(v.is_i64() || v.is_u64()) {
                return Err(format!("{at}: {v} is not an integer"));
            }
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && x < min
            {
                return Err(format!("{at}: {x} < {min}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && x > max
            {
                return Err(format!("{at}: {x} > {max}"));
            }
        }
        Some("boolean") if !v.is_boolean() => return Err(format!("{at}: {v} is not a boolean")),
        Some(_) => {}
    }
    Ok(())
}

#[test]
fn the_check_refuses_what_the_schema_does_not_allow() {
    use serde_json::json;
    let schema = json!({
        "type": "object",
        "properties": {
            "n": {"type": "number", "minimum": 0, "maximum": 1},
            "k": {"enum": ["a", "b"]},
            "s": {"type": "string", "maxLength": 3}
        },
        "required": ["n"],
        "additionalProperties": false
    });
    assert_eq!(
        check(&json!({"n": 0.5, "k": "a", "s": "abc"}), &schema),
        Ok(())
    );
    for bad in [
        json!({"k": "a"}),
        json!({"n": 1.5}),
        json!({"n": "0.5"}),
        json!({"n": 0.5, "k": "c"}),
        json!({"n": 0.5, "s": "abcd"}),
        json!({"n": 0.5, "x": 1}),
        json!([0.5]),
    ] {
        assert!(check(&bad, &schema).is_err(), "{bad}");
    }
    let any = json!({"anyOf": [{"const": 1}, {"type": "string"}]});
    assert!(check(&json!(1), &any).is_ok());
    assert!(check(&json!("x"), &any).is_ok());
    assert!(check(&json!(2), &any).is_err());
}
