//! `slipway schema`: the JSON Schema of the YAML format, for editors.

use crate::raw::PipelineFile;

pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(PipelineFile);
    serde_json::to_value(schema).unwrap_or(serde_json::Value::Null)
}
