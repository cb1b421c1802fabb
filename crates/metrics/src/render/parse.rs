//! Targets as graphite-web's grammar reads them: a path expression (`a.b*.{c,d}`), a call
//! `f(arg, ..., name=arg)` whose arguments are numbers, quoted strings, `true`/`false`, `none`,
//! `inf` or targets, and pipes (`a.b|scale(2)` is `scale(a.b,2)`).

/// One parsed target.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// A path expression, possibly with wildcards.
    Path(String),
    /// A function call.
    Call(Call),
}

/// A function call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    /// The function name.
    pub name: String,
    /// Positional arguments.
    pub args: Vec<Arg>,
    /// Keyword arguments, in order.
    pub kwargs: Vec<(String, Arg)>,
    /// The call's text as written (`seriesByTag` names its series with it).
    pub raw: String,
}

/// One argument.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    /// A target.
    Expr(Expr),
    /// An integer.
    Int(i64),
    /// A number with a fraction or an exponent.
    Float(f64),
    /// A quoted string (quotes removed, nothing unescaped — like graphite-web).
    Str(String),
    /// `true`/`false`.
    Bool(bool),
    /// `none`.
    None,
    /// `inf`.
    Inf,
}

const MAX_DEPTH: usize = 20;

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

/// `(message, byte offset)`.
pub(crate) type ParseError = String;

fn is_path_byte(b: u8) -> bool {
    // pyparsing's printables minus `(){},.'"\|` (the dot separates components; braces are
    // handled on their own).
    b.is_ascii_graphic()
        && !matches!(
            b,
            b'(' | b')' | b'{' | b'}' | b',' | b'.' | b'\'' | b'"' | b'\\' | b'|'
        )
}

impl Parser<'_> {
    fn err(&self, what: &str) -> ParseError {
        format!("{what} at character {}", self.pos)
    }

    fn skip_ws(&mut self) {
        while self
            .bytes
            .get(self.pos)
            .is_some_and(u8::is_ascii_whitespace)
        {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// An expression, then any `| call` pipes.
    fn expression(&mut self, depth: usize) -> Result<Expr, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.err("functions nested too deep"));
        }
        let mut e = self.call_or_path(depth)?;
        loop {
            let save = self.pos;
            self.skip_ws();
            if self.peek() != Some(b'|') {
                self.pos = save;
                return Ok(e);
            }
            self.pos += 1;
            self.skip_ws();
            let Expr::Call(mut c) = self.call_or_path(depth)? else {
                return Err(self.err("expected a function call after `|`"));
            };
            c.args.insert(0, Arg::Expr(e));
            e = Expr::Call(c);
        }
    }

    fn identifier_len(&self) -> usize {
        let rest = &self.bytes[self.pos..];
        if !rest
            .first()
            .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
        {
            return 0;
        }
        rest.iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
            .unwrap_or(rest.len())
    }

    fn call_or_path(&mut self, depth: usize) -> Result<Expr, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let id = self.identifier_len();
        if id > 0 && self.bytes.get(self.pos + id) == Some(&b'(') {
            let name = self.text[self.pos..self.pos + id].to_owned();
            self.pos += id + 1;
            let (args, kwargs) = self.arguments(depth)?;
            let raw = self.text[start..self.pos].to_owned();
            return Ok(Expr::Call(Call {
                name,
                args,
                kwargs,
                raw,
            }));
        }
        self.path().map(Expr::Path)
    }

    /// After `(`: arguments up to and including `)`.
    #[allow(clippy::type_complexity)]
    fn arguments(&mut self, depth: usize) -> Result<(Vec<Arg>, Vec<(String, Arg)>), ParseError> {
        let mut args = Vec::new();
        let mut kwargs: Vec<(String, Arg)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b')') {
            self.pos += 1;
            return Ok((args, kwargs));
        }
        loop {
            self.skip_ws();
            // `name=` starts a keyword argument.
            let id = self.identifier_len();
            let mut after = self.pos + id;
            while self.bytes.get(after).is_some_and(u8::is_ascii_whitespace) {
                after += 1;
            }
            if id > 0
                && self.bytes.get(after) == Some(&b'=')
                && self.bytes.get(after + 1) != Some(&b'~')
            {
                let name = self.text[self.pos..self.pos + id].to_owned();
                self.pos = after + 1;
                let value = self.argument(depth)?;
                kwargs.push((name, value));
            } else {
                if !kwargs.is_empty() {
                    return Err(self.err("positional argument after a keyword argument"));
                }
                args.push(self.argument(depth)?);
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b')') => {
                    self.pos += 1;
                    return Ok((args, kwargs));
                }
                Some(_) => return Err(self.err("expected `,` or `)`")),
                None => return Err(self.err("missing `)`")),
            }
        }
    }

    fn argument(&mut self, depth: usize) -> Result<Arg, ParseError> {
        self.skip_ws();
        let rest = &self.text[self.pos..];
        // What ends a literal: `,`, `)` or the end (pyparsing's `afterNumber`).
        let ends_at = |n: usize| {
            let mut i = self.pos + n;
            while self.bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
                i += 1;
            }
            matches!(self.bytes.get(i), None | Some(b',' | b')'))
        };
        if let Some(q @ (b'"' | b'\'')) = self.peek() {
            let body = &self.bytes[self.pos + 1..];
            let mut i = 0;
            while i < body.len() && body[i] != q {
                // A backslash keeps the next character in the string.
                i += if body[i] == b'\\' { 2 } else { 1 };
            }
            if i >= body.len() {
                return Err(self.err("unterminated string"));
            }
            let s = self.text[self.pos + 1..self.pos + 1 + i].to_owned();
            self.pos += i + 2;
            return Ok(Arg::Str(s));
        }
        let word_len = rest
            .find(|c: char| c == ',' || c == ')' || c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        let word = &rest[..word_len];
        if ends_at(word_len) {
            let lower = word.to_ascii_lowercase();
            let lit = match lower.as_str() {
                "true" => Some(Arg::Bool(true)),
                "false" => Some(Arg::Bool(false)),
                "none" => Some(Arg::None),
                "inf" => Some(Arg::Inf),
                _ => number(word),
            };
            if let Some(lit) = lit {
                self.pos += word_len;
                return Ok(lit);
            }
        }
        self.expression(depth + 1).map(Arg::Expr)
    }

    /// A dotted path: components of path characters and `{a,b}` groups; `\x` escapes.
    fn path(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        let mut out = String::new();
        let mut component_empty = true;
        loop {
            match self.peek() {
                Some(b'\\') => {
                    let Some(c) = self
                        .bytes
                        .get(self.pos + 1)
                        .filter(|c| c.is_ascii_graphic())
                    else {
                        return Err(self.err("a backslash must escape a character"));
                    };
                    out.push(char::from(*c));
                    self.pos += 2;
                    component_empty = false;
                }
                Some(b'{') => {
                    let Some(end) = self.bytes[self.pos..].iter().position(|b| *b == b'}') else {
                        return Err(self.err("unclosed `{`"));
                    };
                    let group = &self.text[self.pos..self.pos + end + 1];
                    if group[1..group.len() - 1]
                        .bytes()
                        .any(|b| !(is_path_byte(b) || b == b','))
                    {
                        return Err(self.err("unexpected character in `{…}`"));
                    }
                    out.push_str(group);
                    self.pos += end + 1;
                    component_empty = false;
                }
                Some(b'.') if !component_empty => {
                    out.push('.');
                    self.pos += 1;
                    component_empty = true;
                }
                Some(b) if is_path_byte(b) => {
                    out.push(char::from(b));
                    self.pos += 1;
                    component_empty = false;
                }
                _ => break,
            }
        }
        if out.is_empty() {
            self.pos = start;
            return Err(self.err("expected a path or a function"));
        }
        if component_empty {
            return Err(self.err("a path cannot end with `.`"));
        }
        Ok(out)
    }
}

fn number(word: &str) -> Option<Arg> {
    let digits = word.strip_prefix('-').unwrap_or(word);
    if digits.is_empty() {
        return None;
    }
    let (mantissa, exponent) = match digits.find(['e', 'E']) {
        Some(i) => (&digits[..i], Some(&digits[i + 1..])),
        None => (digits, None),
    };
    let int_like = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => int_like(a) && int_like(b),
        None => int_like(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| int_like(e.strip_prefix('-').unwrap_or(e)));
    if !mantissa_ok || !exponent_ok {
        return None;
    }
    if exponent.is_none()
        && !mantissa.contains('.')
        && let Ok(i) = word.parse::<i64>()
    {
        return Some(Arg::Int(i));
    }
    word.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Arg::Float)
}

/// Parse one target.
pub(crate) fn parse(text: &str) -> Result<Expr, ParseError> {
    let mut p = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    let e = p.expression(0)?;
    p.skip_ws();
    if p.pos != text.len() {
        return Err(p.err("unexpected text"));
    }
    Ok(e)
}

/// The first path expression in a series name that looks like a call (graphite-web's
/// `_getFirstPathExpression`): `scale(a.b.c,2)` → `a.b.c`.
pub(crate) fn first_path(name: &str) -> Option<String> {
    let mut e = parse(name).ok()?;
    loop {
        match e {
            Expr::Path(p) => return Some(p),
            Expr::Call(c) => match c.args.into_iter().next()? {
                Arg::Expr(inner) => e = inner,
                _ => return None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(text: &str) -> Call {
        match parse(text).expect(text) {
            Expr::Call(c) => c,
            Expr::Path(p) => panic!("path {p}"),
        }
    }

    #[test]
    fn graphite_grammar() {
        assert_eq!(parse("a.b*.{c,d}"), Ok(Expr::Path("a.b*.{c,d}".into())));
        let c = call("movingAverage(servers.*.load, '5min', xFilesFactor=0.5)");
        assert_eq!(c.name, "movingAverage");
        assert_eq!(c.args[1], Arg::Str("5min".into()));
        assert_eq!(c.kwargs, vec![("xFilesFactor".into(), Arg::Float(0.5))]);
        let c = call("f(1, -2, 3.5, 1e3, true, None, inf, \"x,y\")");
        assert_eq!(
            c.args,
            vec![
                Arg::Int(1),
                Arg::Int(-2),
                Arg::Float(3.5),
                Arg::Float(1000.0),
                Arg::Bool(true),
                Arg::None,
                Arg::Inf,
                Arg::Str("x,y".into())
            ]
        );
        // A number followed by more path is a path.
        assert_eq!(
            call("f(10.servers.x)").args,
            vec![Arg::Expr(Expr::Path("10.servers.x".into()))]
        );
        // Pipes.
        let c = call("a.b | scale(2) | alias('x')");
        assert_eq!(c.name, "alias");
        assert!(matches!(&c.args[0], Arg::Expr(Expr::Call(s)) if s.name == "scale"));
        assert_eq!(
            call("seriesByTag('name=cpu', 'dc=~eu.*')").raw,
            "seriesByTag('name=cpu', 'dc=~eu.*')"
        );
        assert_eq!(parse("cpu;dc=eu"), Ok(Expr::Path("cpu;dc=eu".into())));
        for bad in [
            "",
            "f(",
            "f(a,",
            "a..b",
            "a.",
            "f(a) b",
            "f('x)",
            "f(x=1, a)",
            "a.{b",
            "é",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let deep = format!("{}a{}", "f(".repeat(50), ")".repeat(50));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn first_path_of_a_name() {
        assert_eq!(first_path("scale(a.b.c,2)").as_deref(), Some("a.b.c"));
        assert_eq!(
            first_path("summarize(sumSeries(a.*), \"1h\", \"sum\")").as_deref(),
            Some("a.*")
        );
        assert_eq!(first_path("a.b").as_deref(), Some("a.b"));
    }
}
