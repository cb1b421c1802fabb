//! `opsbro evaluator list|eval`.

use opsbro_api::evaluator::{EVAL, EvalAnswer, EvalRequest, FunctionInfo, LIST};

use crate::client::Client;
use crate::error::CliError;
use crate::render;

/// `evaluator list`.
pub async fn list(client: &Client, json: bool) -> Result<(), CliError> {
    let functions: Vec<FunctionInfo> = client.get(LIST).await?;
    if json {
        println!("{}", crate::commands::to_json(&functions)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = functions
        .iter()
        .map(|f| vec![f.group.clone(), f.prototype.clone(), f.doc.clone()])
        .collect();
    print!(
        "{}",
        render::table(&["GROUP", "FUNCTION", "WHAT IT DOES"], &rows)
    );
    Ok(())
}

/// `evaluator eval EXPR`: strings print as they are, other values as JSON.
pub async fn eval(client: &Client, expr: String, json: bool) -> Result<(), CliError> {
    let answer: EvalAnswer = client.post_json(EVAL, &EvalRequest { expr }).await?;
    match (&answer.value, json) {
        (serde_json::Value::String(s), false) => println!("{s}"),
        (v, _) => println!("{v}"),
    }
    Ok(())
}
