//! The sidecar's two budget flags: `--budget-key` names whose spend a shared store
//! counts together, `--budget-usd-per-day` adds a day budget (action reject) to the
//! `--config` file's budgets. Both are validated when the flags are parsed, so a bad
//! value stops the sidecar at start with a message naming the flag.
//!
//! Not here: counting spend (budget.rs) or talking to the store (store.rs).

use std::fmt;

/// The budget key used without `--budget-key`: every sidecar on the same store without
/// the flag shares it.
pub const DEFAULT_BUDGET_KEY: &str = "default";
/// The longest budget key, in bytes: a namespace and a workload name fit (63 + 1 + 253).
pub const MAX_BUDGET_KEY_BYTES: usize = 320;
/// The largest `--budget-usd-per-day`: a sanity bound that catches a value in cents or
/// micro-dollars typed as dollars.
pub const MAX_USD_PER_DAY: f64 = 1_000_000.0;

/// A validated budget key (`<namespace>/<name>` when the webhook sets it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BudgetKey(String);

impl Default for BudgetKey {
    fn default() -> Self {
        Self(DEFAULT_BUDGET_KEY.to_owned())
    }
}

impl fmt::Display for BudgetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for BudgetKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl BudgetKey {
    /// Non-empty, at most [`MAX_BUDGET_KEY_BYTES`], no whitespace or control characters.
    /// The message is clap's: it is printed after the flag's name.
    pub fn parse(text: &str) -> Result<Self, String> {
        const FIX: &str = "use `<namespace>/<name>`, e.g. shop/checkout";
        if text.is_empty() {
            return Err(format!("the budget key is empty; {FIX}"));
        }
        if text.len() > MAX_BUDGET_KEY_BYTES {
            return Err(format!(
                "the budget key is {} bytes long, more than {MAX_BUDGET_KEY_BYTES}; {FIX}",
                text.len()
            ));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "the budget key holds whitespace or control characters; {FIX}"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The key as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as it appears inside a Redis key name: ASCII letters, digits and `._/-`
    /// kept, every other byte `%XX`, so `:`, `{` and `}` (the name's separators and
    /// Redis Cluster's hash tag) never come from the key itself.
    pub fn escaped(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        for byte in self.0.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'/' | b'-') {
                out.push(char::from(byte));
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }
}

/// Parses `--budget-usd-per-day`: a finite number of USD above 0 and at most
/// [`MAX_USD_PER_DAY`]. The message is clap's: it is printed after the flag's name.
pub fn parse_usd_per_day(text: &str) -> Result<f64, String> {
    let fix = format!("give USD per day above 0 and at most {MAX_USD_PER_DAY}, e.g. 50");
    let usd: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number; {fix}"))?;
    if !usd.is_finite() || usd <= 0.0 || usd > MAX_USD_PER_DAY {
        return Err(format!("{usd} is out of range; {fix}"));
    }
    Ok(usd)
}

/// What the flags say about budgets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BudgetFlags {
    /// Whose spend a shared store counts together.
    pub key: BudgetKey,
    /// An extra day budget with action reject.
    pub usd_per_day: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_escaped_for_redis() {
        let key = BudgetKey::parse("shop/checkout-v2").unwrap();
        assert_eq!(key.escaped(), "shop/checkout-v2");
        let odd = BudgetKey::parse("a:{b}%é").unwrap();
        assert_eq!(odd.escaped(), "a%3A%7Bb%7D%25%C3%A9");
        for bad in ["", "a b", "a\nb", &"k".repeat(MAX_BUDGET_KEY_BYTES + 1)] {
            let err = BudgetKey::parse(bad).unwrap_err();
            assert!(err.contains("<namespace>/<name>"), "{bad:?}: {err}");
        }
        assert_eq!(BudgetKey::default().as_str(), "default");
    }

    #[test]
    fn usd_per_day_must_be_a_sane_positive_amount() {
        assert_eq!(parse_usd_per_day("50"), Ok(50.0));
        assert_eq!(parse_usd_per_day("0.5"), Ok(0.5));
        for bad in ["0", "-1", "NaN", "inf", "1e7", "fifty", ""] {
            let err = parse_usd_per_day(bad).unwrap_err();
            assert!(err.contains("e.g. 50"), "{bad}: {err}");
        }
    }
}
