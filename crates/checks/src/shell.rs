//! Shell commands built from templates without ever splicing a value into shell text.
//!
//! A command template such as `echo "member {{member.name}}" >> out` is rendered with every
//! `{{ value }}` replaced by a *reference* to a positional parameter (`${1}`, `${2}`, ...), and
//! the values travel as the arguments of `sh -c SCRIPT opsbro VALUE1 VALUE2 ...`. A parameter
//! expansion is never parsed as shell code, so a value such as `$(id>PWNED)` or `'; reboot #`
//! stays text wherever the template put it. Quoting the value instead (what the agent did
//! before) breaks as soon as the template puts it inside double quotes.
//!
//! The reference is written to suit where it lands, so that it expands to exactly the value
//! (one word, no globbing, no splitting):
//!
//! | where | written as |
//! |---|---|
//! | outside quotes | `"${N}"` ([`Unquoted::Word`]) or `${N}` ([`Unquoted::Split`]) |
//! | inside `"..."` | `${N}` |
//! | inside `'...'` | `'"${N}"'` (close, expand, reopen) |
//!
//! `$(...)` and backquotes start a new quoting context, as in the shell. A here-document body
//! is read as unquoted text, so a value there appears between double quotes.

/// A command ready for `sh -c`: the script, and the values it references as `${1}`, `${2}`...
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShellCommand {
    /// Shell text written by the operator, with references to the arguments.
    pub script: String,
    /// The values, in order (`${1}` is `args[0]`).
    pub args: Vec<String>,
}

impl ShellCommand {
    /// A command with no values.
    pub fn plain(script: impl Into<String>) -> ShellCommand {
        ShellCommand {
            script: script.into(),
            args: Vec::new(),
        }
    }

    /// The argument vector after `/bin/sh`: `-c SCRIPT opsbro ARGS...` (`$0` is `opsbro`).
    pub fn argv(&self) -> Vec<&str> {
        let mut v = vec!["-c", self.script.as_str(), "opsbro"];
        v.extend(self.args.iter().map(String::as_str));
        v
    }
}

/// Starts the marker the renderer writes where a value goes (control characters that a
/// template can never contain: sources with them are refused).
pub const MARK_START: char = '\u{1}';
/// Ends a marker.
pub const MARK_END: char = '\u{2}';

/// Why a command cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellError(pub String);

impl std::fmt::Display for ShellError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The marker for the value at `index`.
pub fn marker(index: usize) -> String {
    format!("{MARK_START}{index}{MARK_END}")
}

/// How a value outside quotes expands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unquoted {
    /// One word, whatever it holds (handler and generator commands).
    Word,
    /// Split into words at blanks, as a value pasted into the text would be (nagios `$macro$`s:
    /// `$args$` = `-w 80 -c 90` gives four arguments), and each word expanded as a file
    /// pattern like pasted text (`*` lists files). That is all: the value's quotes, `$`, `;`
    /// and backquotes are never read as shell syntax.
    Split,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// Outside quotes: the top level, or inside `$(...)` (`subst`, with this many parentheses
    /// open), or inside backquotes (`backquote`).
    Plain {
        parens: u32,
        subst: bool,
        backquote: bool,
    },
    /// Inside double quotes.
    Double,
    /// Inside `$(( ))` or `(( ))`: arithmetic, where bash evaluates variables' text as
    /// expressions (`a[$(cmd)]` runs `cmd`), so no value may go there.
    Arith { parens: u32 },
}

const TOP: Ctx = Ctx::Plain {
    parens: 0,
    subst: false,
    backquote: false,
};

/// Where a value's reference lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Double,
    Single,
}

/// Replace every [`marker`] in `text` by a reference to its value, written for the quoting
/// context it sits in, and return the script with the values as arguments.
pub fn place_arguments(
    text: &str,
    values: Vec<String>,
    unquoted: Unquoted,
) -> Result<ShellCommand, ShellError> {
    let mut out = String::with_capacity(text.len());
    let mut stack = vec![TOP];
    let mut chars = text.chars().peekable();
    // Reads the marker's index (after MARK_START) and writes the reference.
    let reference = |out: &mut String,
                     chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
                     quote: Quote|
     -> Result<(), ShellError> {
        let digits: String = chars.by_ref().take_while(|c| *c != MARK_END).collect();
        let index: usize = digits
            .parse()
            .map_err(|_| ShellError("damaged value marker in a command".into()))?;
        if index >= values.len() {
            return Err(ShellError("value marker without a value".into()));
        }
        let n = index + 1;
        match (quote, unquoted) {
            (Quote::None, Unquoted::Split) | (Quote::Double, _) => {
                out.push_str(&format!("${{{n}}}"))
            }
            (Quote::None, Unquoted::Word) => out.push_str(&format!("\"${{{n}}}\"")),
            // Close the single quotes, expand in double quotes, open them again.
            (Quote::Single, _) => out.push_str(&format!("'\"${{{n}}}\"'")),
        }
        Ok(())
    };
    while let Some(c) = chars.next() {
        let top = *stack.last().unwrap_or(&TOP);
        if c == MARK_START {
            let quote = match top {
                Ctx::Double => Quote::Double,
                Ctx::Plain { .. } => Quote::None,
                Ctx::Arith { .. } => {
                    return Err(ShellError(
                        "a value cannot go into arithmetic ($((...)) or ((...))): bash would \
                         evaluate its text; compare it as text (case, [ = ]) instead"
                            .into(),
                    ));
                }
            };
            reference(&mut out, &mut chars, quote)?;
            continue;
        }
        let word_start = out
            .chars()
            .last()
            .is_none_or(|p| p.is_whitespace() || matches!(p, ';' | '&' | '|' | '(' | ')'));
        out.push(c);
        match (top, c) {
            // A backslash takes the next character literally (in double quotes only `$ ` " \`
            // and newline); a value right after one would lose its quoting.
            (Ctx::Plain { .. } | Ctx::Double, '\\') if chars.peek() == Some(&MARK_START) => {
                return Err(ShellError(
                    "a value cannot follow a backslash in a command".into(),
                ));
            }
            (Ctx::Plain { .. }, '\\') => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            (Ctx::Double, '\\') => {
                if let Some(&next) = chars.peek()
                    && matches!(next, '$' | '`' | '"' | '\\' | '\n')
                {
                    out.push(next);
                    chars.next();
                }
            }
            // A comment runs to the end of the line (its quotes mean nothing).
            (Ctx::Plain { .. }, '#') if word_start => {
                while let Some(&next) = chars.peek() {
                    if next == '\n' {
                        break;
                    }
                    chars.next();
                    if next == MARK_START {
                        reference(&mut out, &mut chars, Quote::None)?;
                    } else {
                        out.push(next);
                    }
                }
            }
            // `((` as a command, `$((`: arithmetic.
            (Ctx::Plain { .. }, '(') if word_start && chars.peek() == Some(&'(') => {
                out.push('(');
                chars.next();
                stack.push(Ctx::Arith { parens: 0 });
            }
            (Ctx::Arith { .. }, '(') => {
                if let Some(Ctx::Arith { parens }) = stack.last_mut() {
                    *parens += 1;
                }
            }
            (Ctx::Arith { parens }, ')') => {
                if parens == 0 {
                    stack.pop();
                    if chars.peek() == Some(&')') {
                        out.push(')');
                        chars.next();
                    }
                } else if let Some(Ctx::Arith { parens }) = stack.last_mut() {
                    *parens -= 1;
                }
            }
            (Ctx::Arith { .. }, _) => {}
            // Single quotes: nothing is special until the closing quote.
            (Ctx::Plain { .. }, '\'') => loop {
                match chars.next() {
                    None => break,
                    Some('\'') => {
                        out.push('\'');
                        break;
                    }
                    Some(MARK_START) => reference(&mut out, &mut chars, Quote::Single)?,
                    Some(other) => out.push(other),
                }
            },
            (Ctx::Plain { .. }, '"') => stack.push(Ctx::Double),
            (Ctx::Double, '"') => {
                stack.pop();
            }
            (
                Ctx::Plain {
                    backquote: true, ..
                },
                '`',
            ) => {
                stack.pop();
            }
            (_, '`') => stack.push(Ctx::Plain {
                parens: 0,
                subst: false,
                backquote: true,
            }),
            (_, '$') if chars.peek() == Some(&'(') => {
                out.push('(');
                chars.next();
                if chars.peek() == Some(&'(') {
                    out.push('(');
                    chars.next();
                    stack.push(Ctx::Arith { parens: 0 });
                } else {
                    stack.push(Ctx::Plain {
                        parens: 0,
                        subst: true,
                        backquote: false,
                    });
                }
            }
            (Ctx::Plain { subst: true, .. }, '(') => {
                if let Some(Ctx::Plain { parens, .. }) = stack.last_mut() {
                    *parens += 1;
                }
            }
            (
                Ctx::Plain {
                    subst: true,
                    parens,
                    ..
                },
                ')',
            ) => {
                if parens == 0 {
                    stack.pop();
                } else if let Some(Ctx::Plain { parens, .. }) = stack.last_mut() {
                    *parens -= 1;
                }
            }
            _ => {}
        }
        if stack.is_empty() {
            // An unbalanced closing quote or parenthesis: carry on at the top level.
            stack.push(TOP);
        }
    }
    Ok(ShellCommand {
        script: out,
        args: values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the command with the real /bin/sh and return its stdout.
    fn run(cmd: &ShellCommand) -> String {
        let out = std::process::Command::new("/bin/sh")
            .args(cmd.argv())
            .output()
            .expect("run /bin/sh");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn build(template: &str, values: &[&str]) -> ShellCommand {
        let mut text = template.to_owned();
        for i in 0..values.len() {
            text = text.replacen("{}", &marker(i), 1);
        }
        place_arguments(
            &text,
            values.iter().map(|v| (*v).to_owned()).collect(),
            Unquoted::Word,
        )
        .expect("build")
    }

    const NASTY: &[&str] = &[
        "$(id>PWNED)",
        "`id`",
        "'; echo PWNED; '",
        "\"; echo PWNED; \"",
        "a b  c",
        "*",
        "$HOME",
        "\\",
        "-n",
        "line\nbreak",
        "",
    ];

    #[test]
    fn a_value_is_the_same_text_in_every_quoting_context() {
        let dir = tempfile::tempdir().expect("tmp");
        for value in NASTY {
            for template in [
                "printf '%s|' {}",
                "printf '%s|' \"{}\"",
                "printf '%s|' \"member {}\"",
                "printf '%s|' 'member {}'",
                "printf '%s|' \"$(printf '%s' {})\"",
                "printf '%s|' \"$(printf '%s' \"{}\")\"",
                "printf '%s|' `printf '%s' {}`x",
                "x={}; printf '%s|' \"$x\"",
            ] {
                let cmd = build(template, &[value]);
                let got = run(&ShellCommand {
                    script: format!("cd {} && {}", dir.path().display(), cmd.script),
                    args: cmd.args.clone(),
                });
                let expected_prefix = if template.contains("member") {
                    "member "
                } else {
                    ""
                };
                let expected_suffix = if template.contains("`x") { "x" } else { "" };
                // Backquotes and unquoted `$( )` split words, as the shell does for any
                // command output; the value itself is never run.
                if template.contains('`') || template.contains("' {})") {
                    assert!(!got.contains("uid="), "{template} {value:?}: {got}");
                } else {
                    assert_eq!(
                        got,
                        format!("{expected_prefix}{value}{expected_suffix}|"),
                        "{template} with {value:?}: {}",
                        cmd.script
                    );
                }
                assert!(
                    !dir.path().join("PWNED").exists(),
                    "{template} ran {value:?}"
                );
            }
        }
    }

    #[test]
    fn references_match_their_context() {
        assert_eq!(build("echo {}", &["v"]).script, "echo \"${1}\"");
        assert_eq!(build("echo \"a {} b\"", &["v"]).script, "echo \"a ${1} b\"");
        assert_eq!(
            build("echo 'a {} b'", &["v"]).script,
            "echo 'a '\"${1}\"' b'"
        );
        assert_eq!(
            build("echo \"$(cat {})\"", &["v"]).script,
            "echo \"$(cat \"${1}\")\""
        );
        assert_eq!(
            build("echo {} {}", &["a", "b"]).script,
            "echo \"${1}\" \"${2}\""
        );
        assert_eq!(build("echo \\\"{}", &["v"]).script, "echo \\\"\"${1}\"");
    }

    #[test]
    fn ten_values_and_more_are_referenced_with_braces() {
        let values: Vec<String> = (0..12).map(|i| format!("v{i}")).collect();
        let text: String = (0..12).map(|i| format!("{} ", marker(i))).collect();
        let cmd = place_arguments(&format!("printf '%s,' {text}"), values, Unquoted::Word)
            .expect("build");
        assert_eq!(run(&cmd), "v0,v1,v2,v3,v4,v5,v6,v7,v8,v9,v10,v11,");
    }

    #[test]
    fn arithmetic_backslashes_and_comments() {
        let err = |t: &str| {
            place_arguments(
                &t.replace("{}", &marker(0)),
                vec!["a[$(id)]".into()],
                Unquoted::Word,
            )
            .expect_err(t)
        };
        // bash evaluates the text of variables in arithmetic: refused.
        err("echo $(( {} + 1 ))");
        err("(( {} > 3 )) && echo big");
        err("echo \\{}");
        err("echo \"\\{}\"");
        // After the arithmetic, values are fine again.
        assert_eq!(
            build("echo $(( 1 + (2 * 3) )) {}", &["v"]).script,
            "echo $(( 1 + (2 * 3) )) \"${1}\""
        );
        // A quote in a comment does not change what follows.
        let cmd = build("# don't\nprintf '%s|' {}", &["a b"]);
        assert_eq!(cmd.script, "# don't\nprintf '%s|' \"${1}\"");
        assert_eq!(run(&cmd), "a b|");
        // `#` inside a word is not a comment.
        assert_eq!(build("echo a#{}", &["v"]).script, "echo a#\"${1}\"");
    }

    #[test]
    fn damaged_markers_are_errors() {
        assert!(
            place_arguments(
                &format!("echo {MARK_START}x{MARK_END}"),
                vec![],
                Unquoted::Word
            )
            .is_err()
        );
        assert!(
            place_arguments(
                &format!("echo {}", marker(3)),
                vec!["a".into()],
                Unquoted::Word
            )
            .is_err()
        );
    }

    #[test]
    fn split_values_become_words_but_never_code() {
        let cmd = place_arguments(
            &format!("printf '%s|' {} \"{}\"", marker(0), marker(1)),
            vec!["-w 80  -c 90".into(), "a  b".into()],
            Unquoted::Split,
        )
        .expect("build");
        assert_eq!(cmd.script, "printf '%s|' ${1} \"${2}\"");
        assert_eq!(run(&cmd), "-w|80|-c|90|a  b|");
        let dir = tempfile::tempdir().expect("tmp");
        let cmd = place_arguments(
            &format!("cd {} && echo {}", dir.path().display(), marker(0)),
            vec!["$(id>PWNED) ; touch PWNED2 `id>PWNED3`".into()],
            Unquoted::Split,
        )
        .expect("build");
        run(&cmd);
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }
}
