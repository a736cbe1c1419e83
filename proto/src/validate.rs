//! The rules a `Transaction` must satisfy, checked by the gateway at ingress and again by
//! the logging service before anything is written (a peer that skips the gateway must not
//! be able to store what the gateway would refuse). Pure and unit-tested; each failure
//! names the field, so the client can fix the message without guessing.

use crate::pb::Transaction;

/// Largest accepted `amount_minor`.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;

/// Why a transaction was rejected: the field and what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct Invalid {
    pub field: &'static str,
    pub rule: &'static str,
}

fn check(ok: bool, field: &'static str, rule: &'static str) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(Invalid { field, rule })
    }
}

fn chars_between(s: &str, min: usize, max: usize) -> bool {
    let n = s.chars().count();
    (min..=max).contains(&n)
}

/// NUL, ESC, newlines and the rest of Unicode's control characters would corrupt log lines
/// and terminals that print the field.
fn no_controls(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Checks every ingress rule; the first failing field is reported.
pub fn transaction(txn: &Transaction) -> Result<(), Invalid> {
    check(
        chars_between(&txn.id, 1, 64)
            && txn
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b)),
        "id",
        "must be 1-64 characters of [A-Za-z0-9._:-]",
    )?;
    check(
        chars_between(&txn.account, 1, 64),
        "account",
        "must be 1-64 characters",
    )?;
    check(
        no_controls(&txn.account),
        "account",
        "must not contain control characters",
    )?;
    check(
        (1..=MAX_AMOUNT_MINOR).contains(&txn.amount_minor),
        "amount_minor",
        "must be between 1 and 1000000000000",
    )?;
    check(
        txn.currency.len() == 3 && txn.currency.bytes().all(|b| b.is_ascii_uppercase()),
        "currency",
        "must be three upper-case letters (^[A-Z]{3}$)",
    )?;
    check(
        chars_between(&txn.merchant, 1, 128),
        "merchant",
        "must be 1-128 characters",
    )?;
    check(
        no_controls(&txn.merchant),
        "merchant",
        "must not contain control characters",
    )?;
    check(
        crate::pb::Priority::try_from(txn.priority).is_ok(),
        "priority",
        "must be PRIORITY_DEFAULT (0), PRIORITY_CRITICAL (1) or PRIORITY_SHEDDABLE (2)",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Transaction {
        Transaction {
            id: "tx-1.a:b_C".into(),
            account: "acct-1".into(),
            amount_minor: 100,
            currency: "EUR".into(),
            merchant: "shop".into(),
            ..Default::default()
        }
    }

    fn field_of(mutate: impl FnOnce(&mut Transaction)) -> Option<&'static str> {
        let mut t = valid();
        mutate(&mut t);
        transaction(&t).err().map(|e| e.field)
    }

    #[test]
    fn accepts_valid() {
        assert_eq!(transaction(&valid()), Ok(()));
        assert_eq!(field_of(|t| t.id = "a".repeat(64)), None);
        assert_eq!(field_of(|t| t.amount_minor = MAX_AMOUNT_MINOR), None);
        assert_eq!(field_of(|t| t.merchant = "é".repeat(128)), None);
    }

    #[test]
    fn names_each_field() {
        assert_eq!(field_of(|t| t.id.clear()), Some("id"));
        assert_eq!(field_of(|t| t.id = "a".repeat(65)), Some("id"));
        assert_eq!(field_of(|t| t.id = "has space".into()), Some("id"));
        assert_eq!(field_of(|t| t.account.clear()), Some("account"));
        assert_eq!(field_of(|t| t.account = "x".repeat(65)), Some("account"));
        assert_eq!(field_of(|t| t.amount_minor = 0), Some("amount_minor"));
        assert_eq!(field_of(|t| t.amount_minor = -5), Some("amount_minor"));
        assert_eq!(
            field_of(|t| t.amount_minor = MAX_AMOUNT_MINOR + 1),
            Some("amount_minor")
        );
        assert_eq!(field_of(|t| t.currency = "eur".into()), Some("currency"));
        assert_eq!(field_of(|t| t.currency = "EURO".into()), Some("currency"));
        assert_eq!(field_of(|t| t.merchant.clear()), Some("merchant"));
        assert_eq!(field_of(|t| t.merchant = "m".repeat(129)), Some("merchant"));
    }

    #[test]
    fn refuses_control_characters() {
        for c in ['\0', '\x1b', '\n', '\r', '\u{7f}', '\u{85}'] {
            assert_eq!(field_of(|t| t.id = format!("a{c}b")), Some("id"), "{c:?}");
            assert_eq!(field_of(|t| t.account = format!("a{c}b")), Some("account"));
            assert_eq!(
                field_of(|t| t.merchant = format!("a{c}b")),
                Some("merchant")
            );
        }
        assert_eq!(field_of(|t| t.merchant = "café – ünïcode".into()), None);
    }

    #[test]
    fn message_names_the_field() {
        let mut t = valid();
        t.currency = "usd".into();
        assert!(
            transaction(&t)
                .unwrap_err()
                .to_string()
                .starts_with("currency: ")
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any transaction at all: validation never panics, and whatever it accepts keeps
            /// every documented rule.
            #[test]
            fn accepted_means_every_rule_holds(
                id in ".{0,70}", account in ".{0,70}", amount in any::<i64>(),
                currency in ".{0,4}", merchant in ".{0,130}",
            ) {
                let t = Transaction { id, account, amount_minor: amount, currency, merchant, ..Default::default() };
                if transaction(&t).is_ok() {
                    prop_assert!((1..=64).contains(&t.id.len()));
                    prop_assert!(t.id.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b)));
                    for s in [&t.account, &t.merchant] {
                        prop_assert!(!s.is_empty() && !s.chars().any(char::is_control));
                    }
                    prop_assert!(t.account.chars().count() <= 64 && t.merchant.chars().count() <= 128);
                    prop_assert!((1..=MAX_AMOUNT_MINOR).contains(&t.amount_minor));
                    prop_assert!(t.currency.len() == 3 && t.currency.bytes().all(|b| b.is_ascii_uppercase()));
                }
            }
        }
    }
}
