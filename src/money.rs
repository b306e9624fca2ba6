//! Money: exact decimal amounts in the service's one currency.
//!
//! Amounts are `rust_decimal::Decimal`, never floats, and travel in JSON as
//! strings (`"12000"`, `"99.50"`). A [`Money`] can only be built through
//! [`Money::parse_amount`], which enforces the currency's minor-unit scale,
//! positivity and the per-charge maximum, so code that holds one never
//! re-validates it.

use std::fmt;

use rust_decimal::Decimal;
use serde::Serialize;

/// The configured ISO 4217 currency and its minor-unit scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency {
    code: &'static str,
    scale: u32,
}

const CURRENCIES: &[(&str, u32)] = &[
    ("KRW", 0),
    ("JPY", 0),
    ("VND", 0),
    ("CLP", 0),
    ("ISK", 0),
    ("USD", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("CHF", 2),
    ("CAD", 2),
    ("AUD", 2),
    ("NZD", 2),
    ("SGD", 2),
    ("HKD", 2),
    ("CNY", 2),
    ("TWD", 2),
    ("INR", 2),
    ("SEK", 2),
    ("NOK", 2),
    ("DKK", 2),
    ("PLN", 2),
    ("CZK", 2),
    ("BRL", 2),
    ("MXN", 2),
    ("ZAR", 2),
    ("BHD", 3),
    ("KWD", 3),
    ("JOD", 3),
    ("OMR", 3),
    ("TND", 3),
];

impl Currency {
    pub fn from_code(code: &str) -> Option<Self> {
        CURRENCIES
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(code))
            .map(|&(code, scale)| Self { code, scale })
    }
    pub fn code(&self) -> &'static str {
        self.code
    }
    /// Number of decimals of the minor unit (0 for KRW, 2 for EUR).
    pub fn scale(&self) -> u32 {
        self.scale
    }
}

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount must be a decimal number in a string, e.g. \"5000\"")]
    NotADecimal,
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount has more decimals than {currency} allows ({scale})")]
    TooPrecise { currency: &'static str, scale: u32 },
    #[error("amount exceeds the maximum of {max} per charge")]
    TooLarge { max: Decimal },
}

/// A positive amount that fits the currency's scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(Decimal);

impl Money {
    /// Parses a client-supplied amount.
    ///
    /// # Errors
    /// Not a decimal, zero or negative, more decimals than the currency's
    /// scale, or above `max`.
    pub fn parse_amount(s: &str, currency: Currency, max: Decimal) -> Result<Self, AmountError> {
        let d = parse_exact(s, currency.scale()).map_err(|e| match e {
            AmountError::TooPrecise { scale, .. } => AmountError::TooPrecise {
                currency: currency.code(),
                scale,
            },
            other => other,
        })?;
        Self::from_decimal(d, currency, max)
    }

    /// Checks an amount computed by the service itself (e.g. price × seats).
    ///
    /// # Errors
    /// As [`Money::parse_amount`].
    pub fn from_decimal(d: Decimal, currency: Currency, max: Decimal) -> Result<Self, AmountError> {
        if d <= Decimal::ZERO {
            return Err(AmountError::NotPositive);
        }
        if d.normalize().scale() > currency.scale() {
            return Err(AmountError::TooPrecise {
                currency: currency.code(),
                scale: currency.scale(),
            });
        }
        if d > max {
            return Err(AmountError::TooLarge { max });
        }
        Ok(Self(d.normalize()))
    }

    pub fn amount(&self) -> Decimal {
        self.0
    }
}

/// Most integer digits an amount may have: far above any real amount, and
/// low enough that `Decimal` (28 significant digits) never rounds.
const MAX_INTEGER_DIGITS: usize = 18;

/// Parses a client-supplied decimal exactly: plain ASCII digits with at
/// most one `.` between digits; no sign, spaces, exponent or grouping.
/// Trailing zeros after the point are harmless (`"5000.00"` is 5000);
/// any other digit beyond `scale` is refused rather than rounded, so
/// `"9.99999999999999999999999999999"` can never become 10.
///
/// # Errors
/// [`AmountError::NotADecimal`] for anything but that shape,
/// [`AmountError::TooPrecise`] for significant digits beyond `scale`
/// (reported by the caller with the currency).
pub fn parse_exact(s: &str, scale: u32) -> Result<Decimal, AmountError> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || int.len() > MAX_INTEGER_DIGITS || frac.is_some_and(|f| !digits(f)) {
        return Err(AmountError::NotADecimal);
    }
    let significant = frac.map_or("", |f| f.trim_end_matches('0'));
    if significant.len() > scale as usize {
        return Err(AmountError::TooPrecise {
            currency: "",
            scale,
        });
    }
    let exact = if significant.is_empty() {
        int.to_owned()
    } else {
        format!("{int}.{significant}")
    };
    exact.parse().map_err(|_| AmountError::NotADecimal)
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_amount::serialize(&self.0, s)
    }
}

/// Formats any decimal the way the API shows money: no trailing zeros
/// beyond the value (`"12000"`, `"99.5"`).
pub fn format_amount(d: Decimal) -> String {
    d.normalize().to_string()
}

/// The one serializer of an amount, for `#[serde(with = "crate::money::serde_amount")]`
/// on a `Decimal` field: a string in the form of [`format_amount`].
pub mod serde_amount {
    use rust_decimal::Decimal;

    /// # Errors
    /// Those of the serializer.
    pub fn serialize<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_amount(*d))
    }
}

/// A value no amount takes: rendered in a field whose value only the
/// statement that writes the body can know (a balance after a conditional
/// debit), then cut out by [`cut_slots`].
pub const SLOT: Decimal = Decimal::MAX;

/// Cuts a JSON body rendered with [`SLOT`] in each of `fields` (in the
/// order they appear) into the `fields.len() + 1` pieces around the values,
/// so that one SQL statement can join them with `trim_scale(value)::text`
/// (PostgreSQL's text of a `numeric` in the form of [`format_amount`]) and store
/// the exact bytes the client gets, in the transaction that decides them.
///
/// # Panics
/// When a field does not hold [`SLOT`] in order: a bug in the caller.
pub fn cut_slots(body: &str, fields: &[&str]) -> Vec<String> {
    let slot = SLOT.to_string();
    let mut pieces = Vec::with_capacity(fields.len() + 1);
    let mut rest = body;
    for field in fields {
        let key = format!("\"{field}\":\"");
        let at = rest
            .find(&format!("{key}{slot}\""))
            .unwrap_or_else(|| panic!("{field} holds no slot in {body}"));
        let value = at + key.len();
        pieces.push(rest[..value].to_owned());
        rest = &rest[value + slot.len()..];
    }
    pieces.push(rest.to_owned());
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::dec;

    const KRW: Currency = Currency {
        code: "KRW",
        scale: 0,
    };
    const EUR: Currency = Currency {
        code: "EUR",
        scale: 2,
    };

    #[test]
    fn slots_join_back_to_the_rendered_body() {
        #[derive(Serialize)]
        struct Body {
            id: &'static str,
            #[serde(with = "serde_amount")]
            amount: Decimal,
            #[serde(with = "serde_amount")]
            balance: Decimal,
        }
        let render = |amount, balance| {
            serde_json::to_string(&Body {
                id: "amount",
                amount,
                balance,
            })
            .unwrap()
        };
        let pieces = cut_slots(&render(SLOT, SLOT), &["amount", "balance"]);
        assert_eq!(pieces.len(), 3);
        let (amount, balance) = (dec!(1500.0000), dec!(0.5000));
        let joined = format!(
            "{}{}{}{}{}",
            pieces[0],
            format_amount(amount),
            pieces[1],
            format_amount(balance),
            pieces[2]
        );
        assert_eq!(joined, render(amount, balance));
    }

    #[test]
    fn accepts_plain_amounts() {
        assert_eq!(
            Money::parse_amount("50000", KRW, dec!(1000000))
                .unwrap()
                .amount(),
            dec!(50000)
        );
        assert_eq!(
            Money::parse_amount("99.50", EUR, dec!(1000))
                .unwrap()
                .to_string(),
            "99.5"
        );
        assert_eq!(
            Money::parse_amount("5000.00", KRW, dec!(10000))
                .unwrap()
                .amount(),
            dec!(5000)
        );
    }

    #[test]
    fn never_rounds_what_it_cannot_hold() {
        // Decimal would round this to 10; the digit check refuses it first.
        assert!(matches!(
            Money::parse_amount("9.99999999999999999999999999999", EUR, dec!(100)),
            Err(AmountError::TooPrecise {
                currency: "EUR",
                ..
            })
        ));
        assert!(matches!(
            Money::parse_amount("9.99999999999999999999999999999", KRW, dec!(100)),
            Err(AmountError::TooPrecise { .. })
        ));
        assert_eq!(
            Money::parse_amount("99.990000000000000000000000000000", EUR, dec!(100))
                .unwrap()
                .amount(),
            dec!(99.99)
        );
    }

    #[test]
    fn refuses_bad_amounts() {
        assert_eq!(
            Money::parse_amount("0", KRW, dec!(10)),
            Err(AmountError::NotPositive)
        );
        assert_eq!(
            Money::parse_amount("-5", KRW, dec!(10)),
            Err(AmountError::NotADecimal)
        );
        assert!(matches!(
            Money::parse_amount("1.5", KRW, dec!(10)),
            Err(AmountError::TooPrecise { .. })
        ));
        assert!(matches!(
            Money::parse_amount("1.005", EUR, dec!(10)),
            Err(AmountError::TooPrecise { .. })
        ));
        assert!(matches!(
            Money::parse_amount("11", KRW, dec!(10)),
            Err(AmountError::TooLarge { .. })
        ));
        for s in [
            "",
            "abc",
            "1e3",
            "0x10",
            "NaN",
            "1,000",
            " 5",
            "5 ",
            "+5",
            "5.",
            ".5",
            "1.2.3",
            "٣",
            "1_000",
            "0000000000000000001",
        ] {
            assert_eq!(
                Money::parse_amount(s, KRW, dec!(10000)),
                Err(AmountError::NotADecimal),
                "{s}"
            );
        }
    }
}
