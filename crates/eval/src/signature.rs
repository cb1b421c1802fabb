//! The library's signatures: names, parameters with the original's names and defaults, and
//! documentation — for `opsbro evaluator list` and for keyword arguments in the front.

/// One library function, for `opsbro evaluator list` and for keyword arguments: the front
/// rewrites `f(a, name=v)` into a positional call from [`FunctionDoc::params`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionDoc {
    /// Name.
    pub name: &'static str,
    /// Call shape, e.g. `grep_file(string, path, regexp=False)`, built from `params` (except for
    /// the overloaded builtins such as `min(list) | min(a, b)`).
    pub prototype: &'static str,
    /// Parameters in order, with the original's names and defaults.
    pub params: &'static [Param],
    /// What it does.
    pub doc: &'static str,
    /// Family: basic, filesystem, system, gossip, kv, network, package, hosting, time, hash,
    /// string, random, display.
    pub group: &'static str,
}

/// One parameter of a library function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    /// Name, as in the original (`group`, `regexp`, `timeout`, ...): the keyword it is given by.
    pub name: &'static str,
    /// Default as opsbro (Python) literal text (`''`, `False`, `10`), or None when the argument
    /// is required. The front translates it like any expression when it fills a gap.
    pub default: Option<&'static str>,
}
