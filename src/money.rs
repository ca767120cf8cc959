//! Money as integers: micro-USD for prices, caps and budgets.
//!
//! Nothing in tollgate holds money in a float. A price such as `"0.05 USD"` is parsed digit by
//! digit into [`UsdMicros`] (50 000 micro-USD); anything finer than a micro-dollar is refused
//! rather than rounded, because rounding a price is deciding to pay a different one.

use std::fmt;
use std::str::FromStr;

/// An amount of US dollars in millionths of a dollar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UsdMicros(pub u64);

/// Micro-USD in one dollar.
pub const MICROS_PER_USD: u64 = 1_000_000;

/// Why a price string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("a price is a decimal and a currency, such as \"0.05 USD\"; got {0:?}")]
    Shape(String),
    #[error("currency {0:?} is not supported for prices; write the price in USD")]
    Currency(String),
    #[error("{0:?} is not a decimal amount (digits, at most one '.')")]
    Amount(String),
    #[error("{0:?} has more than 6 decimal places; the smallest unit is 0.000001 USD")]
    TooPrecise(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

impl UsdMicros {
    /// Parses a non-negative decimal number of dollars (`"0.05"`, `"12"`, `"0.000001"`).
    pub fn parse_decimal(text: &str) -> Result<Self, PriceError> {
        let (whole, frac) = match text.split_once('.') {
            Some((w, f)) => (w, f),
            None => (text, ""),
        };
        let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() && frac.is_empty()
            || !digits_only(whole)
            || !digits_only(frac)
            || (whole.is_empty() && !text.starts_with('.'))
        {
            return Err(PriceError::Amount(text.to_owned()));
        }
        if frac.len() > 6 {
            return Err(PriceError::TooPrecise(text.to_owned()));
        }
        let too_large = || PriceError::TooLarge(text.to_owned());
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        let mut frac_micros: u64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            frac_micros += u64::from(b - b'0') * 10u64.pow(5 - i as u32);
        }
        whole
            .checked_mul(MICROS_PER_USD)
            .and_then(|w| w.checked_add(frac_micros))
            .map(UsdMicros)
            .ok_or_else(too_large)
    }

    /// Renders as a plain decimal without a currency (`"0.05"`).
    pub fn decimal(self) -> String {
        let whole = self.0 / MICROS_PER_USD;
        let frac = self.0 % MICROS_PER_USD;
        if frac == 0 {
            return whole.to_string();
        }
        let frac = format!("{frac:06}");
        format!("{whole}.{}", frac.trim_end_matches('0'))
    }
}

impl FromStr for UsdMicros {
    type Err = PriceError;

    /// Parses a price with its currency: `"0.05 USD"`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split_whitespace();
        let (Some(amount), Some(currency), None) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(PriceError::Shape(text.to_owned()));
        };
        if currency != "USD" {
            return Err(PriceError::Currency(currency.to_owned()));
        }
        Self::parse_decimal(amount)
    }
}

impl fmt::Display for UsdMicros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} USD", self.decimal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prices_exactly() {
        assert_eq!("0.05 USD".parse(), Ok(UsdMicros(50_000)));
        assert_eq!("12 USD".parse(), Ok(UsdMicros(12_000_000)));
        assert_eq!("0.000001 USD".parse(), Ok(UsdMicros(1)));
        assert_eq!(".5 USD".parse(), Ok(UsdMicros(500_000)));
        assert_eq!("3. USD".parse(), Ok(UsdMicros(3_000_000)));
    }

    #[test]
    fn refuses_prices_it_would_have_to_round_or_guess() {
        assert!(matches!(
            "0.0000001 USD".parse::<UsdMicros>(),
            Err(PriceError::TooPrecise(_))
        ));
        assert!(matches!(
            "0.05".parse::<UsdMicros>(),
            Err(PriceError::Shape(_))
        ));
        assert!(matches!(
            "0.05 EUR".parse::<UsdMicros>(),
            Err(PriceError::Currency(_))
        ));
        assert!(matches!(
            "-1 USD".parse::<UsdMicros>(),
            Err(PriceError::Amount(_))
        ));
        assert!(matches!(
            "1e3 USD".parse::<UsdMicros>(),
            Err(PriceError::Amount(_))
        ));
        assert!(matches!(
            ". USD".parse::<UsdMicros>(),
            Err(PriceError::Amount(_))
        ));
        assert!(matches!(
            "99999999999999999999 USD".parse::<UsdMicros>(),
            Err(PriceError::TooLarge(_))
        ));
    }

    #[test]
    fn displays_without_trailing_zeros() {
        assert_eq!(UsdMicros(50_000).to_string(), "0.05 USD");
        assert_eq!(UsdMicros(2_000_000).to_string(), "2 USD");
        assert_eq!(UsdMicros(1).to_string(), "0.000001 USD");
    }
}

/// Unix seconds as RFC 3339 UTC (`2026-11-22T05:36:06Z`).
pub fn rfc3339(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Civil-from-days (Howard Hinnant), valid for every date after 1970.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Now, in Unix seconds.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn formats_utc_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_320_000), "2026-11-22T04:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
