//! `opsbro evaluator list|eval|wait-eval-true`.

use std::time::Instant;

use opsbro_api::evaluator::{EVAL, EvalAnswer, EvalRequest, FunctionInfo, LIST};

use crate::client::Client;
use crate::commands::gossip::POLL;
use crate::commands::secs;
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

/// `evaluator wait-eval-true EXPR`: evaluate until the value is `true`. An evaluation error
/// (collector data not there yet, say) is retried like a false value and shown at the timeout.
pub async fn wait_eval_true(client: &Client, expr: String, timeout: f64) -> Result<(), CliError> {
    let deadline = Instant::now() + secs(timeout);
    let request = EvalRequest { expr };
    loop {
        let last = match client.post_json::<EvalAnswer, _>(EVAL, &request).await {
            Ok(EvalAnswer {
                value: serde_json::Value::Bool(true),
            }) => {
                println!("true");
                return Ok(());
            }
            Ok(answer) => format!("it is {}", answer.value),
            Err(CliError::Api {
                status: 400,
                message,
                ..
            }) => format!("it fails: {message}"),
            Err(e) => return Err(e),
        };
        if Instant::now() >= deadline {
            return Err(CliError::Negative(format!(
                "`{}` is still not true after {timeout}s: {last}",
                request.expr
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}
