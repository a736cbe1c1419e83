//! Who may claim which priority. `priority` is a field the client fills in, and
//! `x-client-id` is what the client says it is: both are unauthenticated unless the
//! deployment authenticates them in front of the gateway. So a claim above DEFAULT is
//! honoured only for clients `--priority-policy` grants it to; any other client's CRITICAL
//! transactions are taken as DEFAULT (`sluice_gateway_priority_demoted_total` counts them,
//! and the span says so). Lowering one's own priority (SHEDDABLE) needs no grant.
//!
//! The policy is a comma-separated list of `CLIENT=PRIORITY`: `payments=critical`;
//! `*=critical` trusts every client (the behaviour before grants). A client is named as
//! for rate limits: its `x-client-id`, else its IP address.

use std::collections::HashMap;

use sluice_proto::pb::Priority;

/// The most clients a policy may name.
pub const MAX_GRANTS: usize = 1024;

/// `--priority-policy`, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriorityPolicy {
    grants: HashMap<String, Priority>,
    /// What `*` grants: every client not named (DEFAULT when absent).
    everyone: Option<Priority>,
}

impl PriorityPolicy {
    /// Parses `CLIENT=PRIORITY[,…]`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut policy = Self::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (client, priority) = entry
                .split_once('=')
                .ok_or_else(|| format!("`{entry}`: expected CLIENT=PRIORITY"))?;
            let priority = match priority.trim().to_ascii_lowercase().as_str() {
                "critical" => Priority::Critical,
                "default" => Priority::Default,
                other => {
                    return Err(format!(
                        "`{entry}`: `{other}` is not a priority to grant (critical or default)"
                    ));
                }
            };
            match client.trim() {
                "" => return Err(format!("`{entry}`: no client named")),
                "*" => policy.everyone = Some(priority),
                client => {
                    policy.grants.insert(client.to_string(), priority);
                }
            }
        }
        if policy.grants.len() > MAX_GRANTS {
            return Err(format!("at most {MAX_GRANTS} clients"));
        }
        Ok(policy)
    }

    /// True when every claim is honoured as made (`*=critical`).
    pub fn trusts_everyone(&self) -> bool {
        self.everyone == Some(Priority::Critical)
    }

    /// The priority `client`'s claim is taken as: the claim, capped at what it is granted.
    pub fn allowed(&self, client: Option<&str>, claimed: Priority) -> Priority {
        if claimed != Priority::Critical {
            return claimed;
        }
        let granted = client
            .and_then(|c| self.grants.get(c).copied())
            .or(self.everyone)
            .unwrap_or(Priority::Default);
        if granted == Priority::Critical {
            Priority::Critical
        } else {
            Priority::Default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_without_a_grant_is_taken_as_default() {
        let policy = PriorityPolicy::default();
        assert_eq!(
            policy.allowed(Some("anyone"), Priority::Critical),
            Priority::Default
        );
        assert_eq!(policy.allowed(None, Priority::Critical), Priority::Default);
        assert_eq!(
            policy.allowed(Some("anyone"), Priority::Sheddable),
            Priority::Sheddable,
            "lowering needs no grant"
        );
    }

    #[test]
    fn a_grant_honours_the_claim_for_that_client_only() {
        let policy = PriorityPolicy::parse("payments=critical, batch=default").unwrap();
        assert_eq!(
            policy.allowed(Some("payments"), Priority::Critical),
            Priority::Critical
        );
        assert_eq!(
            policy.allowed(Some("batch"), Priority::Critical),
            Priority::Default
        );
        assert_eq!(
            policy.allowed(Some("other"), Priority::Critical),
            Priority::Default
        );
        let trusting = PriorityPolicy::parse("*=critical").unwrap();
        assert!(trusting.trusts_everyone());
        assert_eq!(
            trusting.allowed(None, Priority::Critical),
            Priority::Critical
        );
    }

    #[test]
    fn a_bad_policy_says_what_is_wrong() {
        for (text, says) in [
            ("payments", "expected CLIENT=PRIORITY"),
            ("=critical", "no client named"),
            ("payments=urgent", "not a priority to grant"),
        ] {
            let err = PriorityPolicy::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
        assert_eq!(
            PriorityPolicy::parse("").unwrap(),
            PriorityPolicy::default()
        );
    }
}
