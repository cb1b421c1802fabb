//! The rhai engine with opsbro's limits, operators and functions, and the evaluation entry points.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rhai::{AST, Dynamic, Engine, EvalAltResult, Position};

use crate::context::EvalContext;
use crate::convert::to_json;
use crate::front::{self, Resolver};
use crate::functions;
use crate::signature::FunctionDoc;

/// Why an expression has no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} error{}: {message}{}", position.map(|c| format!(" at column {c}")).unwrap_or_default(), if near.is_empty() { String::new() } else { format!(" (near `{near}`)") })]
pub struct EvalError {
    /// Syntax, runtime or limit.
    pub kind: ErrorKind,
    /// What went wrong.
    pub message: String,
    /// 1-based column in the original expression, when known.
    pub position: Option<usize>,
    /// The offending text of the expression.
    pub near: String,
}

/// Classes of evaluation errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The expression does not parse.
    Syntax,
    /// It parsed but failed while running (unknown function, wrong types, ...).
    Runtime,
    /// It ran into a limit (too many operations, too deep, too big).
    Limit,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Syntax => "syntax",
            ErrorKind::Runtime => "evaluation",
            ErrorKind::Limit => "limit",
        })
    }
}

/// Limits applied to every evaluation.
pub const MAX_OPERATIONS: u64 = 200_000;
/// Deepest function-call nesting.
pub const MAX_CALL_LEVELS: usize = 32;
/// Deepest expression nesting.
pub const MAX_EXPR_DEPTH: usize = 64;
/// Longest string a script can build.
pub const MAX_STRING: usize = 64 * 1024;
/// Largest array or map a script can build.
pub const MAX_COLLECTION: usize = 10_000;

/// Runs opsbro expressions. Cheap to share (`Arc`): compiled expressions are cached.
pub struct Evaluator {
    engine: Engine,
    cache: Mutex<HashMap<String, AST>>,
}

impl Evaluator {
    /// An evaluator whose gossip functions read `ctx`.
    pub fn new(ctx: Arc<dyn EvalContext>) -> Self {
        let mut engine = Engine::new();
        // Scripts must not write to the agent's output.
        engine.on_print(|_| {});
        engine.on_debug(|_, _, _| {});
        // Built-in operators are looked up before registered ones unless this is off; we need
        // Python's true division for integers.
        engine.set_fast_operators(false);
        engine.set_max_operations(MAX_OPERATIONS);
        engine.set_max_call_levels(MAX_CALL_LEVELS);
        engine.set_max_expr_depths(MAX_EXPR_DEPTH, MAX_EXPR_DEPTH);
        engine.set_max_string_size(MAX_STRING);
        engine.set_max_array_size(MAX_COLLECTION);
        engine.set_max_map_size(MAX_COLLECTION);
        engine.set_strict_variables(true);
        engine.disable_symbol("eval");
        functions::register(&mut engine, ctx);
        Self {
            engine,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The function library, sorted by group then name.
    pub fn functions(&self) -> Vec<FunctionDoc> {
        let mut docs = functions::DOCS.to_vec();
        docs.sort_by_key(|d| (d.group, d.name));
        docs
    }

    /// Check that `expr` parses (placeholders count as values); nothing runs.
    pub fn check_syntax(&self, expr: &str) -> Result<(), EvalError> {
        let resolver = |_: &str| Some(serde_json::Value::from(0));
        let translated =
            front::translate_with(expr, &resolver, functions::DOCS).map_err(|e| EvalError {
                kind: ErrorKind::Syntax,
                message: e.message,
                position: Some(column(expr, e.offset)),
                near: near(expr, e.offset),
            })?;
        self.engine
            .compile(&translated.source)
            .map(|_| ())
            .map_err(|e| {
                let pos = e.position();
                self.error(ErrorKind::Syntax, e.to_string(), pos, expr, &translated)
            })
    }

    /// Evaluate `expr` (placeholders resolved by `resolver`) to a JSON value.
    pub fn eval(
        &self,
        expr: &str,
        resolver: &dyn Resolver,
    ) -> Result<serde_json::Value, EvalError> {
        let value = self.eval_dynamic(expr, resolver)?;
        Ok(to_json(&value))
    }

    /// Evaluate `expr` as a condition, with Python truthiness (0, "", [], {} and None are false).
    pub fn eval_bool(&self, expr: &str, resolver: &dyn Resolver) -> Result<bool, EvalError> {
        Ok(truthy(&self.eval_dynamic(expr, resolver)?))
    }

    /// Evaluate `expr` for display: strings as they are, other values as JSON text.
    pub fn eval_string(&self, expr: &str, resolver: &dyn Resolver) -> Result<String, EvalError> {
        let v = self.eval_dynamic(expr, resolver)?;
        Ok(match v.clone().into_immutable_string() {
            Ok(s) => s.to_string(),
            Err(_) => to_json(&v).to_string(),
        })
    }

    fn eval_dynamic(&self, expr: &str, resolver: &dyn Resolver) -> Result<Dynamic, EvalError> {
        let translated =
            front::translate_with(expr, resolver, functions::DOCS).map_err(|e| EvalError {
                kind: ErrorKind::Syntax,
                message: e.message,
                position: Some(column(expr, e.offset)),
                near: near(expr, e.offset),
            })?;
        let ast = {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            match cache.get(&translated.source) {
                Some(ast) => ast.clone(),
                None => {
                    let ast = self.engine.compile(&translated.source).map_err(|e| {
                        let pos = e.position();
                        self.error(ErrorKind::Syntax, e.to_string(), pos, expr, &translated)
                    })?;
                    // Placeholder values are baked into the source, so bound the cache.
                    if cache.len() > 4096 {
                        cache.clear();
                    }
                    cache.insert(translated.source.clone(), ast.clone());
                    ast
                }
            }
        };
        self.engine.eval_ast::<Dynamic>(&ast).map_err(|e| {
            let kind = match *e {
                EvalAltResult::ErrorTooManyOperations(_)
                | EvalAltResult::ErrorStackOverflow(_)
                | EvalAltResult::ErrorDataTooLarge(..)
                | EvalAltResult::ErrorTooManyModules(_) => ErrorKind::Limit,
                _ => ErrorKind::Runtime,
            };
            let pos = e.position();
            self.error(kind, e.to_string(), pos, expr, &translated)
        })
    }

    fn error(
        &self,
        kind: ErrorKind,
        message: String,
        pos: Position,
        expr: &str,
        t: &front::Translated,
    ) -> EvalError {
        // rhai reports positions in the rewritten source; map them back.
        let (position, near_text) = match (pos.line(), pos.position()) {
            (Some(line), Some(col)) => {
                let out_offset: usize = t
                    .source
                    .split_inclusive('\n')
                    .take(line - 1)
                    .map(str::len)
                    .sum::<usize>()
                    + col.saturating_sub(1);
                let src = t.source_offset(out_offset).min(expr.len());
                (Some(column(expr, src)), near(expr, src))
            }
            _ => (None, String::new()),
        };
        let message = message.split(" (line ").next().unwrap_or_default();
        let message = match kind {
            ErrorKind::Limit => format!("{message}: the expression was stopped"),
            _ => message.to_owned(),
        };
        EvalError {
            kind,
            message,
            position,
            near: near_text,
        }
    }
}

fn column(expr: &str, offset: usize) -> usize {
    let offset = offset.min(expr.len());
    let before = expr.get(..offset).unwrap_or(expr);
    before.rsplit('\n').next().unwrap_or(before).chars().count() + 1
}

fn near(expr: &str, offset: usize) -> String {
    let mut start = offset.min(expr.len());
    while !expr.is_char_boundary(start) {
        start -= 1;
    }
    expr[start..]
        .chars()
        .take(24)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

/// Python truthiness of a value.
pub fn truthy(v: &Dynamic) -> bool {
    if let Some(b) = v.clone().try_cast::<bool>() {
        return b;
    }
    if let Some(i) = v.clone().try_cast::<i64>() {
        return i != 0;
    }
    if let Some(f) = v.clone().try_cast::<f64>() {
        return f != 0.0;
    }
    if v.is_unit() {
        return false;
    }
    if let Ok(s) = v.clone().into_immutable_string() {
        return !s.is_empty();
    }
    if let Some(a) = v.clone().try_cast::<rhai::Array>() {
        return !a.is_empty();
    }
    if let Some(m) = v.clone().try_cast::<rhai::Map>() {
        return !m.is_empty();
    }
    true
}
