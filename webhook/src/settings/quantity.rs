//! Kubernetes resource quantities (`10m`, `32Mi`, `1.5`, `1e3`): syntax check and an
//! approximate numeric value, so a request can be compared with its limit before the
//! apiserver refuses the pod with a less helpful message.
//!
//! It does not canonicalize: the text the user wrote is what goes into the pod spec.

use std::fmt;

/// A validated, non-negative Kubernetes quantity: the original text and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantity {
    text: String,
    value: f64,
}

impl Quantity {
    /// Parses `text` with the grammar of `k8s.io/apimachinery/pkg/api/resource`:
    /// `<sign?><digits>[.<digits>]<suffix>`, suffix one of `Ki Mi Gi Ti Pi Ei`,
    /// `m k M G T P E` (or none), or `e<n>`/`E<n>`. Negative values are refused since
    /// requests and limits cannot be negative. The error is the reason, without the value
    /// or the name of the field, which the caller adds (shortened when huge).
    pub fn parse(text: &str) -> Result<Self, String> {
        const FORM: &str = "expected a Kubernetes quantity such as 100m, 0.5, 64Mi or 1Gi";
        let unsigned = text.strip_prefix('+').unwrap_or(text);
        if unsigned.starts_with('-') {
            return Err(format!("negative; {FORM}"));
        }
        let number_len = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(number_len);
        let digits = number.chars().filter(char::is_ascii_digit).count();
        if digits == 0 || number.matches('.').count() > 1 {
            return Err(format!("no valid number; {FORM}"));
        }
        let Ok(mantissa) = number.parse::<f64>() else {
            return Err(format!("no valid number; {FORM}"));
        };
        let Some(multiplier) = suffix_multiplier(suffix) else {
            return Err(format!("unknown suffix; {FORM}"));
        };
        let value = mantissa * multiplier;
        if !value.is_finite() {
            return Err(format!("out of range; {FORM}"));
        }
        Ok(Self {
            text: text.to_owned(),
            value,
        })
    }

    /// The text as written, which is what goes into the pod spec.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The approximate value in base units (cores, bytes), for comparisons only.
    pub fn value(&self) -> f64 {
        self.value
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn suffix_multiplier(suffix: &str) -> Option<f64> {
    let binary = |power: i32| Some(1024f64.powi(power));
    let decimal = |power: i32| Some(10f64.powi(power));
    match suffix {
        "" => decimal(0),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        _ => {
            let exponent = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            let unsigned = exponent
                .strip_prefix('+')
                .or_else(|| exponent.strip_prefix('-'))
                .unwrap_or(exponent);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let power: i32 = exponent.parse().ok()?;
            decimal(power)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::millicores("10m", 0.01)]
    #[case::plain("2", 2.0)]
    #[case::decimal("0.5", 0.5)]
    #[case::leading_dot(".5", 0.5)]
    #[case::trailing_dot("1.", 1.0)]
    #[case::mebibytes("32Mi", 32.0 * 1024.0 * 1024.0)]
    #[case::megabytes("128M", 128e6)]
    #[case::kilo("1k", 1e3)]
    #[case::exponent("1e3", 1e3)]
    #[case::negative_exponent("5E-3", 5e-3)]
    #[case::plus_sign("+1Gi", 1024.0 * 1024.0 * 1024.0)]
    fn accepts_valid_quantities(#[case] text: &str, #[case] expected: f64) {
        let q = Quantity::parse(text).unwrap();
        assert!((q.value() - expected).abs() <= expected * 1e-12, "{text}");
        assert_eq!(q.as_str(), text);
    }

    #[rstest]
    #[case::empty("")]
    #[case::negative("-1")]
    #[case::unit_only("Mi")]
    #[case::lowercase_binary("32mi")]
    #[case::bytes_suffix("32MB")]
    #[case::space("32 Mi")]
    #[case::two_dots("1.2.3")]
    #[case::bare_exponent("1e")]
    #[case::unicode("１０m")]
    #[case::huge_exponent("1e999")]
    fn refuses_invalid_quantities(#[case] text: &str) {
        let err = Quantity::parse(text).unwrap_err();
        assert!(err.contains("Kubernetes quantity"), "{err}");
    }
}
