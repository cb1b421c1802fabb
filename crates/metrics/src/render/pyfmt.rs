//! Numbers written the way graphite-web's Python writes them in series names: `str(float)`
//! (`100.0`, `1e+20`) and `'%g'` (`0.5`, `1e+06`), so that names match graphite-web's.

/// Python's `repr(float)`: the shortest text that reads back, `.0` on whole numbers, exponent
/// form below 1e-4 and from 1e16.
pub fn repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // `{:e}` gives the shortest round-trip digits: "1.5e-7", "1e20".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if neg { "-" } else { "" };
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{esign}{:02}", exp.abs());
    }
    let n = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    if exp < 0 {
        let zeros = "0".repeat(usize::try_from(-exp - 1).unwrap_or(0));
        return format!("{sign}0.{zeros}{digits}");
    }
    if exp + 1 >= n {
        let zeros = "0".repeat(usize::try_from(exp + 1 - n).unwrap_or(0));
        return format!("{sign}{digits}{zeros}.0");
    }
    let (int, frac) = digits.split_at(usize::try_from(exp + 1).unwrap_or(0));
    format!("{sign}{int}.{frac}")
}

/// Python's `'%g' % x`: 6 significant digits, trailing zeros removed, exponent form below
/// 1e-4 and from 1e6.
pub fn g(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let sci = format!("{x:.5e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        let decimals = usize::try_from(5 - exp).unwrap_or(0);
        let fixed = format!("{x:.decimals$}");
        return trim_zeros(&fixed);
    }
    let esign = if exp < 0 { '-' } else { '+' };
    format!("{}e{esign}{:02}", trim_zeros(mantissa), exp.abs())
}

fn trim_zeros(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s.to_owned()
    }
}

/// Python's `'%d' % x` for a float: truncated toward zero.
pub fn d(x: f64) -> String {
    if x.is_finite() {
        format!("{}", x.trunc()).trim_end_matches(".0").to_owned()
    } else {
        repr(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_python() {
        for (x, want) in [
            (100.0, "100.0"),
            (0.5, "0.5"),
            (1e20, "1e+20"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.5e-7, "1.5e-07"),
            (123.456, "123.456"),
        ] {
            assert_eq!(repr(x), want, "repr {x}");
        }
        for (x, want) in [
            (2.0, "2"),
            (0.5, "0.5"),
            (1e6, "1e+06"),
            (100000.0, "100000"),
            (0.123456789, "0.123457"),
            (-3.0, "-3"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1234567.0, "1.23457e+06"),
            (99.5, "99.5"),
            (999999.5, "1e+06"),
        ] {
            assert_eq!(g(x), want, "%g {x}");
        }
        assert_eq!(d(3.9), "3");
        assert_eq!(d(-3.9), "-3");
        assert_eq!(d(60.0), "60");
    }
}
