//! Kubernetes resource quantities (`10m`, `32Mi`, `1.5`, `1e3`): syntax check, an
//! approximate numeric value, so a request can be compared with its limit before the
//! apiserver refuses the pod with a less helpful message, and the sidecar's bounds
//! ([`Quantity::cpu`], [`Quantity::memory`]): the grammar alone admits `1e100` cores, and
//! `128m` of memory (a thousandth of a byte, meant as `128Mi`).
//!
//! It does not canonicalize: the text the user wrote is what goes into the pod spec.

use std::fmt;

use super::Resource;

/// The sidecar's bounds for one resource, in base units and as written in messages.
struct Bounds {
    min: f64,
    min_text: &'static str,
    max: f64,
    max_text: &'static str,
    /// Added after `max_text` in messages.
    unit: &'static str,
    form: &'static str,
}

/// CPU: the apiserver's precision up to far more than one proxy can use.
const CPU: Bounds = Bounds {
    min: 1e-3,
    min_text: "1m",
    max: 64.0,
    max_text: "64",
    unit: " cores",
    form: "give a cpu quantity from 1m to 64 (cores), e.g. 100m or 2",
};

/// Memory: below 1Mi is a unit mistake (`128m` for `128Mi`); the top is far more than one
/// proxy can use.
const MEMORY: Bounds = Bounds {
    min: 1024.0 * 1024.0,
    min_text: "1Mi",
    max: 64.0 * 1024.0 * 1024.0 * 1024.0,
    max_text: "64Gi",
    unit: "",
    form: "give a memory quantity from 1Mi to 64Gi, e.g. 64Mi or 1Gi \
           (`m` is a thousandth, `Mi` a mebibyte)",
};

fn bounds(resource: Resource) -> &'static Bounds {
    match resource {
        Resource::Cpu => &CPU,
        Resource::Memory => &MEMORY,
    }
}

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

    /// A CPU request or limit: a quantity from 1m to 64 (cores).
    pub fn cpu(text: &str) -> Result<Self, String> {
        Self::bounded(Resource::Cpu, text)
    }

    /// A memory request or limit: a quantity from 1Mi to 64Gi.
    pub fn memory(text: &str) -> Result<Self, String> {
        Self::bounded(Resource::Memory, text)
    }

    /// [`Quantity::parse`], then the sidecar's bounds for `resource`; the error says them.
    pub fn bounded(resource: Resource, text: &str) -> Result<Self, String> {
        let quantity = Self::parse(text)?;
        let b = bounds(resource);
        // The value is a float: a bound written another way (`0.001`, `65536Mi`) must pass.
        const SLACK: f64 = 1e-9;
        if quantity.value < b.min * (1.0 - SLACK) {
            Err(format!("less than {}; {}", b.min_text, b.form))
        } else if quantity.value > b.max * (1.0 + SLACK) {
            Err(format!("more than {}{}; {}", b.max_text, b.unit, b.form))
        } else {
            Ok(quantity)
        }
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

    #[rstest]
    #[case::cpu_min(Resource::Cpu, "1m")]
    #[case::cpu_min_decimal(Resource::Cpu, "0.001")]
    #[case::cpu_min_exponent(Resource::Cpu, "1e-3")]
    #[case::cpu_default(Resource::Cpu, "10m")]
    #[case::cpu_max(Resource::Cpu, "64")]
    #[case::cpu_max_millis(Resource::Cpu, "64000m")]
    #[case::cpu_plus_sign(Resource::Cpu, "+1")]
    #[case::memory_min(Resource::Memory, "1Mi")]
    #[case::memory_min_bytes(Resource::Memory, "1048576")]
    #[case::memory_default(Resource::Memory, "32Mi")]
    #[case::memory_decimal_suffix(Resource::Memory, "128M")]
    #[case::memory_max(Resource::Memory, "64Gi")]
    #[case::memory_max_mebibytes(Resource::Memory, "65536Mi")]
    #[case::memory_max_bytes(Resource::Memory, "68719476736")]
    fn within_bounds(#[case] resource: Resource, #[case] text: &str) {
        assert_eq!(Quantity::bounded(resource, text).unwrap().as_str(), text);
    }

    #[rstest]
    #[case::cpu_absurd(Resource::Cpu, "1e100", "more than 64 cores")]
    #[case::cpu_above(Resource::Cpu, "65", "more than 64 cores")]
    #[case::cpu_just_above(Resource::Cpu, "64001m", "more than 64 cores")]
    #[case::cpu_exa(Resource::Cpu, "1E", "more than 64 cores")]
    #[case::cpu_below(Resource::Cpu, "0.1m", "less than 1m")]
    #[case::cpu_tiny(Resource::Cpu, "1e-100", "less than 1m")]
    #[case::cpu_zero(Resource::Cpu, "0", "less than 1m")]
    #[case::cpu_negative(Resource::Cpu, "-1", "negative")]
    #[case::cpu_overflow(Resource::Cpu, "1e999", "out of range")]
    #[case::memory_absurd(Resource::Memory, "1e100", "more than 64Gi")]
    #[case::memory_above(Resource::Memory, "65Gi", "more than 64Gi")]
    #[case::memory_tebibyte(Resource::Memory, "1Ti", "more than 64Gi")]
    #[case::memory_millis(Resource::Memory, "128m", "less than 1Mi")]
    #[case::memory_below(Resource::Memory, "1023Ki", "less than 1Mi")]
    #[case::memory_zero(Resource::Memory, "0", "less than 1Mi")]
    #[case::memory_negative(Resource::Memory, "-64Mi", "negative")]
    fn outside_bounds(#[case] resource: Resource, #[case] text: &str, #[case] reason: &str) {
        let err = Quantity::bounded(resource, text).unwrap_err();
        assert!(err.starts_with(reason), "{text}: {err}");
        let range = match resource {
            Resource::Cpu => "from 1m to 64",
            Resource::Memory => "from 1Mi to 64Gi",
        };
        assert!(
            err.contains(range) || err.contains("Kubernetes quantity"),
            "{text}: {err}"
        );
    }

    #[rstest]
    #[case::cpu(Resource::Cpu)]
    #[case::memory(Resource::Memory)]
    fn bound_texts_say_the_bound_values(#[case] resource: Resource) {
        let b = bounds(resource);
        for (text, value) in [(b.min_text, b.min), (b.max_text, b.max)] {
            assert_eq!(Quantity::parse(text).unwrap().value(), value, "{text}");
            assert!(b.form.contains(text), "{text} not in {}", b.form);
        }
    }
}
