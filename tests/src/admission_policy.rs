//! Evaluates a ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1) on an
//! object, as the API server's admission does, with a real CEL interpreter (the `cel`
//! crate): its `variables` in order (each sees the earlier ones as `variables.<name>`),
//! then every validation, with `object` and `request.operation` bound. A validation that
//! is false denies with its `message`; one that fails to evaluate denies too, as under
//! `failurePolicy: Fail` (the shipped policy's).
//!
//! JSON numbers become CEL `int`s, as Kubernetes' CEL types integer fields.

use std::collections::HashMap;
use std::sync::Arc;

use cel::{Context, Program, Value as Cel};
use serde_json::Value;

/// The messages of the validations `object` fails under `policy`; empty means admitted.
pub fn denials(policy: &Value, object: &Value, operation: &str) -> Vec<String> {
    let spec = &policy["spec"];
    let mut context = Context::default();
    context.add_variable_from_value("object", to_cel(object));
    context.add_variable_from_value(
        "request",
        Cel::Map(HashMap::from([("operation".to_string(), Cel::from(operation))]).into()),
    );
    let mut variables: HashMap<String, Cel> = HashMap::new();
    for variable in spec["variables"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().expect("a variable's name");
        let value = match run(&context, &variable["expression"]) {
            Ok(v) => v,
            Err(e) => return vec![format!("variable {name}: {e}")],
        };
        variables.insert(name.to_string(), value);
        context.add_variable_from_value("variables", Cel::Map(variables.clone().into()));
    }
    let mut denied = Vec::new();
    for validation in spec["validations"].as_array().into_iter().flatten() {
        let message = validation["message"]
            .as_str()
            .unwrap_or("failed expression")
            .to_string();
        match run(&context, &validation["expression"]) {
            Ok(Cel::Bool(true)) => {}
            Ok(Cel::Bool(false)) => denied.push(message),
            Ok(other) => denied.push(format!("{message} (not a bool: {other:?})")),
            Err(e) => denied.push(format!("{message} (error: {e})")),
        }
    }
    denied
}

fn run(context: &Context, expression: &Value) -> Result<Cel, String> {
    let source = expression.as_str().ok_or("an expression is not a string")?;
    let program = Program::compile(source).map_err(|e| format!("{source}: {e}"))?;
    program
        .execute(context)
        .map_err(|e| format!("{source}: {e}"))
}

fn to_cel(value: &Value) -> Cel {
    match value {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => Cel::Map(
            map.iter()
                .map(|(k, v)| (k.clone(), to_cel(v)))
                .collect::<HashMap<String, Cel>>()
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_false_validation_denies_with_its_message_and_a_true_one_admits() {
        let policy = json!({"spec": {
            "variables": [{"name": "n", "expression": "object.spec.containers.size()"}],
            "validations": [
                {"expression": "variables.n == 1", "message": "one container"},
                {"expression": "request.operation == 'CREATE'", "message": "create"},
                {"expression": "!has(object.spec.hostNetwork)", "message": "no host network"}
            ]
        }});
        let pod = json!({"spec": {"containers": [{"name": "a"}]}});
        assert!(denials(&policy, &pod, "CREATE").is_empty());
        let wide =
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "hostNetwork": true}});
        assert_eq!(
            denials(&policy, &wide, "UPDATE"),
            ["one container", "create", "no host network"]
        );
    }
}
