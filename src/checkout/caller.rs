//! Who is calling, and every cap a payment by them must fit under.

use super::Tool;
use crate::budget::credential::Credential;
use crate::ledger::{BudgetNode, Cap};
use crate::money::{UsdMicros, now_unix};
use crate::pay::Rules;

use super::Checkout;

impl Checkout {
    /// Makes the policy's default profile (if it names one) the caller of requests without a
    /// credential. Needs the root key.
    pub fn use_default_profile(&mut self) -> Result<(), String> {
        let Some(name) = self.policy.default_profile.clone() else {
            return Ok(());
        };
        let profile = self
            .policy
            .profile(&name)
            .ok_or_else(|| format!("the policy has no profile {name:?}"))?;
        let root = self.root.as_ref().ok_or_else(|| {
            format!(
                "the policy ({}) gives callers without a credential the profile {name:?}, which \
                 needs the root key: run `tollgate init`",
                self.policy.source
            )
        })?;
        let token = root
            .profile_credential(&name, &profile.caveats)
            .map_err(|e| e.to_string())?;
        self.profile_token = Some(token.to_base64url());
        Ok(())
    }

    /// Every cap a payment by `caller` must fit under: the policy's, and each budget caveat in
    /// the caller's chain (a child's spend counts against every ancestor's budget).
    pub fn caps(&self, caller: Option<&Credential>) -> Vec<Cap> {
        let mut caps = Vec::new();
        if let Some(day) = self.policy.per_day {
            caps.push(Cap::rolling("policy:per_day", day.0, 86_400));
        }
        if let Some(total) = self.policy.total {
            caps.push(Cap::lifetime("policy:total", total.0));
        }
        for budget in caller.map(|c| c.budgets.as_slice()).unwrap_or_default() {
            caps.push(Cap::lifetime(budget.key.clone(), budget.limit.0));
        }
        caps
    }

    /// Who is calling: the request's own token, else `TOLLGATE_TOKEN`, else the policy's
    /// default profile, else nobody in particular (the policy alone applies). An invalid token
    /// is an error, never "nobody".
    pub fn identify(&self, request_token: Option<&str>) -> Result<Option<Credential>, String> {
        let Some(token) = request_token
            .or(self.env_token.as_deref())
            .or(self.profile_token.as_deref())
        else {
            return Ok(None);
        };
        let Some(root) = &self.root else {
            return Err(
                "a credential was presented, but this tollgate has no root key \
                        (`tollgate init`), so it cannot be verified"
                    .to_owned(),
            );
        };
        let credential = Credential::verify(token, root, now_unix()).map_err(|e| e.to_string())?;
        match self.ledger.is_revoked(&credential.lineage) {
            Ok(false) => {
                self.register(&credential);
                Ok(Some(credential))
            }
            Ok(true) => Err("the token has been revoked".to_owned()),
            Err(e) => Err(format!(
                "the ledger cannot be read to check revocations: {e}"
            )),
        }
    }

    /// Whether `caller` may call `tool` at all; the refusal says what the credential forbids.
    pub fn admits(&self, tool: &dyn Tool, caller: Option<&Credential>) -> Result<(), String> {
        let Some(c) = caller else { return Ok(()) };
        if !c.restrictions.allows_tool(tool.name()) {
            return Err(format!(
                "your credential does not allow the tool `{}`; nothing was sent",
                tool.name()
            ));
        }
        if !c.restrictions.allows_host(&tool.host(), tool.port()) {
            return Err(format!(
                "your credential does not allow the host {}; nothing was sent",
                tool.host()
            ));
        }
        Ok(())
    }

    /// Records the credential's chain of budgets in the ledger's tree, once per process.
    pub fn register(&self, credential: &Credential) {
        if credential.budgets.is_empty() {
            return;
        }
        let id = credential.id().to_owned();
        let mut seen = self
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(&id) {
            return;
        }
        let chain: Vec<BudgetNode> = credential
            .budgets
            .iter()
            .map(|b| BudgetNode {
                key: b.key.clone(),
                label: b.label.clone(),
                limit_usd_micros: b.limit.0,
            })
            .collect();
        match self.ledger.register_budgets(&chain, now_unix()) {
            Ok(()) => {
                seen.insert(id);
            }
            // Only the tree view misses it; spending is checked against the keys themselves.
            Err(e) => tracing::warn!(error = %e, "could not record a credential's budgets"),
        }
    }

    /// The rules an offer for `tool` by `caller` is judged by.
    pub fn rules<'a>(&'a self, tool: &'a dyn Tool, caller: Option<&'a Credential>) -> Rules<'a> {
        Rules {
            policy: &self.policy,
            assets: &self.assets,
            tool_max: tool.max_price().unwrap_or(UsdMicros(0)),
            tool: tool.name(),
            rails: &*self.rails,
            restrictions: caller.map(|c| &c.restrictions),
        }
    }
}
