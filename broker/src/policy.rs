//! Access policies bound to host groups, and the decision: a pure function of
//! (identity, request, policies, now, client address, recent requests) that
//! answers allow, deny (with a reason the caller may show) or needs-approval
//! (with the rule approvers must satisfy). No IO, no clock: callers pass
//! `now`, so the whole table is unit-tested with an injected clock.
//!
//! A policy is a TOML document bound to one host group (`gatehouse policy set
//! GROUP --file policy.toml`). A host in several groups gets the strictest
//! combination of the policies bound to its groups; a host none of whose
//! groups has a policy gets [`Policy::default_policy`].

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::users::Role;

/// Longest grant a policy may allow (the same cap as admin-made grants).
pub const MAX_TTL: Duration = crate::grants::MAX_GRANT_TTL;
/// Max TTL when a policy says nothing.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(8 * 3600);
/// TTL of a request that names none (capped by the policy's max TTL).
pub const DEFAULT_REQUEST_TTL: Duration = Duration::from_secs(3600);
/// Most approvals a policy may require.
pub const MAX_APPROVALS: u32 = 10;
/// The roles that may approve when a policy names no approvers.
pub const DEFAULT_APPROVER_ROLES: [&str; 2] = ["approver", "admin"];

/// How risky an agent is (set by whoever registered it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Low,
    Medium,
    High,
}

impl Risk {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "low" => Some(Risk::Low),
            "medium" => Some(Risk::Medium),
            "high" => Some(Risk::High),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Human {
        name: String,
        role: Role,
    },
    /// `groups` are the groups the agent is scoped to (including any live
    /// temporary elevation).
    Agent {
        name: String,
        groups: Vec<String>,
        risk: Risk,
    },
}

impl Identity {
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Human { .. } => "user",
            Identity::Agent { .. } => "agent",
        }
    }
    pub fn name(&self) -> &str {
        match self {
            Identity::Human { name, .. } | Identity::Agent { name, .. } => name,
        }
    }
}

/// The host a request names, as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub name: String,
    pub groups: Vec<String>,
}

/// What is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessAsk {
    pub host: HostFacts,
    pub login: String,
    /// `None`: [`DEFAULT_REQUEST_TTL`], capped by the policy.
    pub ttl: Option<Duration>,
    pub reason: String,
    /// Agents only: groups to add to the agent's scope for the grant's
    /// lifetime (temporary elevation). Always needs a human approval.
    pub elevate_groups: Vec<String>,
}

/// A policy bound to a group.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundPolicy {
    pub group: String,
    pub policy: Policy,
}

/// A validated policy. Build it with [`Policy::parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `None`: any login.
    pub logins: Option<Vec<String>>,
    pub max_ttl: Duration,
    /// 0: allowed without approval.
    pub approvals: u32,
    pub approver_users: Vec<String>,
    pub approver_roles: Vec<String>,
    pub reason_required: bool,
    /// `None`: from anywhere.
    pub source_cidrs: Option<Vec<IpNet>>,
    pub agents: bool,
    pub agent_max_risk: Risk,
    pub canary: bool,
    pub rate_limit: Option<RateLimit>,
    /// Empty: any time. Otherwise the request must fall in one of them.
    pub windows: Vec<Window>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
}

/// Days and hours in a time zone, e.g. mon–fri 09:00–18:00 Europe/Oslo.
/// `start` is inclusive and `end` exclusive; `end` before `start` spans
/// midnight (the days name the day the window opens).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Monday first.
    pub days: [bool; 7],
    /// Seconds after midnight.
    pub start: u32,
    /// Seconds after midnight; 86 400 is `24:00`.
    pub end: u32,
    pub time_zone: TimeZone,
    pub time_zone_name: String,
}

// ---------------------------------------------------------------------------
// Parsing

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    logins: Option<Vec<String>>,
    max_ttl: Option<String>,
    approvals: Option<u32>,
    approvers: Option<Vec<String>>,
    approver_roles: Option<Vec<String>>,
    reason_required: Option<bool>,
    source_cidrs: Option<Vec<String>>,
    agents: Option<bool>,
    agent_max_risk: Option<String>,
    canary: Option<bool>,
    rate_limit: Option<RateFile>,
    #[serde(default, rename = "window")]
    windows: Vec<WindowFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateFile {
    requests: u32,
    per: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    days: Option<Vec<String>>,
    start: String,
    end: String,
    time_zone: String,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn parse_day(s: &str) -> Option<usize> {
    let s = s.trim().to_ascii_lowercase();
    let full = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
    DAY_NAMES.iter().position(|d| *d == s).or_else(|| full.iter().position(|d| *d == s))
}

fn parse_days(list: &[String]) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    for item in list {
        let bad = || format!("window day {item:?} is not a day (mon … sun) or a range (mon-fri)");
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse_day(a).ok_or_else(bad)?, parse_day(b).ok_or_else(bad)?);
                let mut d = a;
                loop {
                    if let Some(x) = days.get_mut(d) {
                        *x = true;
                    }
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => {
                let d = parse_day(item).ok_or_else(bad)?;
                if let Some(x) = days.get_mut(d) {
                    *x = true;
                }
            }
        }
    }
    if !days.iter().any(|d| *d) {
        return Err("a window's days list is empty".into());
    }
    Ok(days)
}

/// `HH:MM` (00:00 … 24:00) as seconds after midnight.
fn parse_clock(s: &str, what: &str) -> Result<u32, String> {
    let bad = || format!("window {what} {s:?} must be HH:MM (00:00 to 24:00)");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60)
}

fn parse_ttl(s: &str, what: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{what} {s:?} is not a duration such as 30m or 8h: {e}"))
}

fn fmt_clock(secs: u32) -> String {
    format!("{:02}:{:02}", secs / 3600, (secs % 3600) / 60)
}

/// A duration as people write it: `90s`, `30m`, `8h`, `1h30m`, `2d`.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (days, h, m, sec) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(days, "d"), (h, "h"), (m, "m"), (sec, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

impl Window {
    fn describe(&self) -> String {
        format!(
            "{} {}–{} {}",
            describe_days(&self.days),
            fmt_clock(self.start),
            fmt_clock(self.end),
            self.time_zone_name
        )
    }

    /// If `now` is inside the window, when the window closes.
    fn contains(&self, now: Timestamp) -> Option<Option<Timestamp>> {
        let z = now.to_zoned(self.time_zone.clone());
        let secs =
            u32::try_from(i32::from(z.hour()) * 3600 + i32::from(z.minute()) * 60 + i32::from(z.second())).unwrap_or(0);
        let today = usize::try_from(z.weekday().to_monday_zero_offset()).unwrap_or(0);
        let yesterday = (today + 6) % 7;
        let on = |d: usize| self.days.get(d).copied().unwrap_or(false);
        let date = z.date();
        // The instant at `secs` after midnight of `date` (+ `extra_days`).
        let at = |extra_days: i64, secs: u32| -> Option<Timestamp> {
            let mut d = date;
            let mut secs = secs;
            let mut extra = extra_days;
            if secs >= 86_400 {
                secs -= 86_400;
                extra += 1;
            }
            for _ in 0..extra {
                d = d.tomorrow().ok()?;
            }
            let h = i8::try_from(secs / 3600).ok()?;
            let m = i8::try_from((secs % 3600) / 60).ok()?;
            d.at(h, m, 0, 0).to_zoned(self.time_zone.clone()).ok().map(|z| z.timestamp())
        };
        if self.start < self.end {
            (on(today) && self.start <= secs && secs < self.end).then(|| at(0, self.end))
        } else if on(today) && secs >= self.start {
            Some(at(1, self.end))
        } else if on(yesterday) && secs < self.end {
            Some(at(0, self.end))
        } else {
            None
        }
    }
}

fn describe_days(days: &[bool; 7]) -> String {
    if days.iter().all(|d| *d) {
        return "every day".into();
    }
    // Runs such as mon-fri, sat.
    let mut parts = Vec::new();
    let mut i = 0;
    while i < 7 {
        if days.get(i).copied().unwrap_or(false) {
            let start = i;
            while i + 1 < 7 && days.get(i + 1).copied().unwrap_or(false) {
                i += 1;
            }
            let (a, b) = (DAY_NAMES.get(start).copied().unwrap_or("?"), DAY_NAMES.get(i).copied().unwrap_or("?"));
            parts.push(if start == i { a.to_string() } else { format!("{a}-{b}") });
        }
        i += 1;
    }
    parts.join(",")
}

impl Policy {
    /// The policy of a host none of whose groups has one: any login, up to
    /// 8 h, one approval from an approver (role approver or admin) other than
    /// the requester; humans and agents may ask.
    pub fn default_policy() -> Self {
        Self {
            logins: None,
            max_ttl: DEFAULT_MAX_TTL,
            approvals: 1,
            approver_users: Vec::new(),
            approver_roles: DEFAULT_APPROVER_ROLES.iter().map(|s| s.to_string()).collect(),
            reason_required: false,
            source_cidrs: None,
            agents: true,
            agent_max_risk: Risk::High,
            canary: false,
            rate_limit: None,
            windows: Vec::new(),
        }
    }

    /// Parse and validate a policy document. Unknown keys, bad values and
    /// impossible rules are errors with a message naming the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let f: PolicyFile = toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " ").to_string())?;
        let mut p = Self::default_policy();
        if let Some(logins) = f.logins {
            if logins.is_empty() {
                return Err("logins is empty: list at least one login, or leave it out to allow any".into());
            }
            for l in &logins {
                crate::ids::check_login(l).map_err(|e| format!("logins: {e}"))?;
            }
            let mut l = logins;
            l.sort();
            l.dedup();
            p.logins = Some(l);
        }
        if let Some(t) = f.max_ttl {
            let d = parse_ttl(&t, "max_ttl")?;
            if d.is_zero() || d > MAX_TTL {
                return Err(format!("max_ttl must be between 1s and {}", fmt_duration(MAX_TTL)));
            }
            p.max_ttl = d;
        }
        if let Some(n) = f.approvals {
            if n > MAX_APPROVALS {
                return Err(format!("approvals must be at most {MAX_APPROVALS}"));
            }
            p.approvals = n;
        }
        match (f.approvers, f.approver_roles) {
            (None, None) => {}
            (users, roles) => {
                let users = users.unwrap_or_default();
                for u in &users {
                    crate::ids::check_name("user", u).map_err(|e| format!("approvers: {e}"))?;
                }
                let roles = roles.unwrap_or_default();
                for r in &roles {
                    Role::parse(r).map_err(|e| format!("approver_roles: {e}"))?;
                }
                p.approver_users = users;
                p.approver_roles = roles;
            }
        }
        if p.approvals > 0 && p.approver_users.is_empty() && p.approver_roles.is_empty() {
            return Err("approvals needs someone to give them: set approvers or approver_roles".into());
        }
        if p.approvals > 0
            && p.approver_roles.is_empty()
            && u32::try_from(p.approver_users.len()).unwrap_or(u32::MAX) < p.approvals
        {
            return Err(format!(
                "approvals = {} but only {} approver(s) are named",
                p.approvals,
                p.approver_users.len()
            ));
        }
        p.reason_required = f.reason_required.unwrap_or(false);
        if let Some(cidrs) = f.source_cidrs {
            if cidrs.is_empty() {
                return Err("source_cidrs is empty: list networks, or leave it out to allow any address".into());
            }
            let nets = cidrs
                .iter()
                .map(|c| {
                    c.trim()
                        .parse::<IpNet>()
                        .or_else(|_| c.trim().parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| format!("source_cidrs: {c:?} is not a network such as 10.0.0.0/8"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            p.source_cidrs = Some(nets);
        }
        p.agents = f.agents.unwrap_or(true);
        if let Some(r) = f.agent_max_risk {
            p.agent_max_risk =
                Risk::parse(&r).ok_or_else(|| format!("agent_max_risk {r:?} must be low, medium or high"))?;
        }
        p.canary = f.canary.unwrap_or(false);
        if let Some(r) = f.rate_limit {
            let per = parse_ttl(&r.per, "rate_limit.per")?;
            if r.requests == 0 {
                return Err("rate_limit.requests must be at least 1".into());
            }
            if per.is_zero() || per > Duration::from_secs(31 * 86_400) {
                return Err("rate_limit.per must be between 1s and 31d".into());
            }
            p.rate_limit = Some(RateLimit { requests: r.requests, per });
        }
        for w in f.windows {
            let days = match &w.days {
                Some(d) => parse_days(d)?,
                None => [true; 7],
            };
            let start = parse_clock(&w.start, "start")?;
            let end = parse_clock(&w.end, "end")?;
            if start == end || start == 86_400 {
                return Err(format!("window {}–{} is empty", w.start, w.end));
            }
            let tz = TimeZone::get(w.time_zone.trim()).map_err(|_| {
                format!("window time_zone {:?} is not a known time zone (e.g. Europe/Oslo)", w.time_zone)
            })?;
            p.windows.push(Window { days, start, end, time_zone: tz, time_zone_name: w.time_zone.trim().to_string() });
        }
        Ok(p)
    }

    /// One line per rule, for `policy show` and `policy test`.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.canary {
            out.push("canary: every request or connection is refused and raises a critical alarm".into());
            return out;
        }
        out.push(match &self.logins {
            Some(l) => format!("logins: {}", l.join(", ")),
            None => "logins: any".into(),
        });
        out.push(format!("max TTL: {}", fmt_duration(self.max_ttl)));
        out.push(if self.approvals == 0 {
            "approval: not needed".into()
        } else {
            format!("approval: {} from {} (never the requester)", self.approvals, self.approvers_text())
        });
        if self.reason_required {
            out.push("reason: required".into());
        }
        if let Some(c) = &self.source_cidrs {
            out.push(format!("from: {}", c.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")));
        }
        if !self.windows.is_empty() {
            out.push(format!("when: {}", self.windows.iter().map(Window::describe).collect::<Vec<_>>().join(" or ")));
        }
        if let Some(r) = &self.rate_limit {
            out.push(format!("rate limit: {} requests per {}", r.requests, fmt_duration(r.per)));
        }
        out.push(if self.agents {
            format!("agents: may request (risk up to {})", self.agent_max_risk.as_str())
        } else {
            "agents: may not request".into()
        });
        out
    }

    fn approvers_text(&self) -> String {
        let mut parts = Vec::new();
        if !self.approver_users.is_empty() {
            parts.push(format!("users [{}]", self.approver_users.join(", ")));
        }
        if !self.approver_roles.is_empty() {
            parts.push(format!("roles [{}]", self.approver_roles.join(", ")));
        }
        parts.join(" or ")
    }
}

// ---------------------------------------------------------------------------
// The decision

/// Who may approve, per policy that requires approval. An approver must be
/// eligible under every set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproverSet {
    /// The group whose policy this comes from (`default` for the default).
    pub policy: String,
    pub users: Vec<String>,
    pub roles: Vec<String>,
}

impl ApproverSet {
    fn admits(&self, name: &str, role: Role) -> bool {
        self.users.iter().any(|u| u == name) || self.roles.iter().any(|r| r == role.as_str())
    }
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.users.is_empty() {
            parts.push(format!("users [{}]", self.users.join(", ")));
        }
        if !self.roles.is_empty() {
            parts.push(format!("roles [{}]", self.roles.join(", ")));
        }
        parts.join(" or ")
    }
}

/// What approvers must satisfy for a request to become a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRule {
    /// Distinct approvals needed.
    pub approvals: u32,
    pub approver_sets: Vec<ApproverSet>,
    pub reason_required: bool,
    /// Groups whose policies applied (`default` when none did).
    pub policies: Vec<String>,
}

impl ApprovalRule {
    pub fn describe(&self) -> String {
        let who: Vec<String> = self.approver_sets.iter().map(ApproverSet::describe).collect();
        format!(
            "{} approval{} from {}",
            self.approvals,
            if self.approvals == 1 { "" } else { "s" },
            if who.is_empty() { "an administrator".to_string() } else { who.join(" and ") }
        )
    }
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Grant now, for `ttl`.
    Allow {
        #[serde(rename = "ttl_seconds", serialize_with = "ser_secs")]
        ttl: Duration,
        policies: Vec<String>,
    },
    /// Refuse. `reason` is safe to show the requester (it never tells a
    /// canary from any other host).
    Deny {
        reason: String,
        /// The host is a canary: the caller must raise the alarm. Never
        /// shown to the requester.
        #[serde(skip)]
        canary: bool,
    },
    /// File the request and wait for humans.
    NeedsApproval {
        #[serde(rename = "ttl_seconds", serialize_with = "ser_secs")]
        ttl: Duration,
        rule: ApprovalRule,
    },
}

/// The decision and the reasoning behind it (for `policy test` and audit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    pub decision: Decision,
    pub trace: Vec<String>,
}

/// The reason a request for an unknown host (and a canary) reads.
pub fn no_such_host(host: &str) -> String {
    format!("you may not request access to host {host}")
}

/// Decide a request. See [`evaluate`] for the reasoning too.
pub fn decide(
    identity: &Identity,
    ask: &AccessAsk,
    policies: &[BoundPolicy],
    now: Timestamp,
    client: Option<IpAddr>,
    recent_requests: &[i64],
) -> Decision {
    evaluate(identity, ask, policies, now, client, recent_requests).decision
}

/// Decide a request and explain why. `policies` may hold every bound policy;
/// only those bound to one of the host's groups apply. `recent_requests`
/// are the Unix-millisecond times of this identity's earlier requests (for
/// rate limits).
pub fn evaluate(
    identity: &Identity,
    ask: &AccessAsk,
    policies: &[BoundPolicy],
    now: Timestamp,
    client: Option<IpAddr>,
    recent_requests: &[i64],
) -> Evaluation {
    let mut trace = Vec::new();
    let default = [BoundPolicy { group: "default".into(), policy: Policy::default_policy() }];
    let mut applicable: Vec<&BoundPolicy> = policies.iter().filter(|p| ask.host.groups.contains(&p.group)).collect();
    if applicable.is_empty() {
        applicable = default.iter().collect();
        trace.push(format!(
            "no policy is bound to the groups of {} [{}]; the default applies",
            ask.host.name,
            ask.host.groups.join(", ")
        ));
    } else {
        let names: Vec<&str> = applicable.iter().map(|p| p.group.as_str()).collect();
        trace.push(format!("policies of groups [{}] apply (strictest combination)", names.join(", ")));
    }
    let names: Vec<String> = applicable.iter().map(|p| p.group.clone()).collect();
    let host = &ask.host.name;
    let deny = |mut trace: Vec<String>, reason: String| {
        trace.push(format!("deny: {reason}"));
        Evaluation { decision: Decision::Deny { reason, canary: false }, trace }
    };

    // Canary: nothing else matters, and the requester must not learn why.
    if let Some(p) = applicable.iter().find(|p| p.policy.canary) {
        trace.push(format!("{host} is a canary (group {}): the request trips the alarm", p.group));
        return Evaluation { decision: Decision::Deny { reason: no_such_host(host), canary: true }, trace };
    }

    // Who may ask.
    match identity {
        Identity::Agent { name, groups, risk } => {
            if let Some(p) = applicable.iter().find(|p| !p.policy.agents) {
                return deny(trace, format!("agents may not request access to hosts in group {}", p.group));
            }
            if let Some(p) = applicable.iter().find(|p| *risk > p.policy.agent_max_risk) {
                return deny(
                    trace,
                    format!(
                        "agent {name} has risk {}, and group {} allows agents up to {}",
                        risk.as_str(),
                        p.group,
                        p.policy.agent_max_risk.as_str()
                    ),
                );
            }
            let in_scope = ask.host.groups.iter().any(|g| groups.contains(g));
            let by_elevation = ask.host.groups.iter().any(|g| ask.elevate_groups.contains(g));
            if !in_scope && !by_elevation {
                return deny(
                    trace,
                    format!(
                        "agent {name} is scoped to groups [{}], host {host} is in [{}]",
                        groups.join(", "),
                        ask.host.groups.join(", ")
                    ),
                );
            }
            if in_scope {
                trace.push(format!("agent {name} is scoped to a group of {host}"));
            } else {
                trace.push(format!("{host} is reachable only through the requested elevation"));
            }
        }
        Identity::Human { name, .. } => {
            if !ask.elevate_groups.is_empty() {
                return deny(trace, format!("group elevation is for agents; {name} is a user"));
            }
        }
    }

    // Login.
    if crate::ids::check_login(&ask.login).is_err() {
        return deny(trace, format!("{:?} is not a valid login", crate::audit::cap(&ask.login, 40)));
    }
    let mut allowed: Option<BTreeSet<&str>> = None;
    for p in &applicable {
        if let Some(l) = &p.policy.logins {
            let set: BTreeSet<&str> = l.iter().map(String::as_str).collect();
            allowed = Some(match allowed {
                None => set,
                Some(a) => a.intersection(&set).copied().collect(),
            });
        }
    }
    match &allowed {
        Some(a) if !a.contains(ask.login.as_str()) => {
            let list: Vec<&str> = a.iter().copied().collect();
            let allowed_text = if list.is_empty() { "none".to_string() } else { list.join(", ") };
            return deny(trace, format!("login {} is not allowed on {host} (allowed: {allowed_text})", ask.login));
        }
        Some(_) => trace.push(format!("login {} is allowed", ask.login)),
        None => trace.push(format!("any login is allowed, {} included", ask.login)),
    }

    // Where from.
    for p in &applicable {
        if let Some(nets) = &p.policy.source_cidrs {
            let list = nets.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
            match client {
                Some(ip) if nets.iter().any(|n| n.contains(&ip)) => {
                    trace.push(format!("address {ip} is in the networks of group {} ({list})", p.group));
                }
                Some(ip) => {
                    return deny(
                        trace,
                        format!("your address {ip} is not in the allowed networks for group {} ({list})", p.group),
                    );
                }
                None => {
                    return deny(trace, format!("your address is unknown and group {} allows only {list}", p.group));
                }
            }
        }
    }

    // When.
    let mut window_end: Option<Timestamp> = None;
    for p in &applicable {
        if p.policy.windows.is_empty() {
            continue;
        }
        let mut inside = None;
        for w in &p.policy.windows {
            if let Some(end) = w.contains(now) {
                // The latest-closing window that holds now.
                inside = match (inside, end) {
                    (None, e) => Some(e),
                    (Some(Some(a)), Some(b)) => Some(Some(if b > a { b } else { a })),
                    (Some(_), _) => Some(None),
                };
            }
        }
        let text = p.policy.windows.iter().map(Window::describe).collect::<Vec<_>>().join(" or ");
        match inside {
            Some(end) => {
                trace.push(format!("inside the time window of group {} ({text})", p.group));
                if let Some(e) = end {
                    window_end = Some(match window_end {
                        Some(w) if w < e => w,
                        _ => e,
                    });
                }
            }
            None => {
                let here = p
                    .policy
                    .windows
                    .first()
                    .map(|w| {
                        let z = now.to_zoned(w.time_zone.clone());
                        format!(
                            "; it is {} {} there",
                            DAY_NAMES
                                .get(usize::try_from(z.weekday().to_monday_zero_offset()).unwrap_or(0))
                                .copied()
                                .unwrap_or("?"),
                            z.strftime("%H:%M:%S")
                        )
                    })
                    .unwrap_or_default();
                return deny(trace, format!("outside the allowed time window for group {} ({text}{here})", p.group));
            }
        }
    }

    // How long.
    let max_ttl = applicable.iter().map(|p| p.policy.max_ttl).min().unwrap_or(DEFAULT_MAX_TTL);
    let requested = ask.ttl.unwrap_or_else(|| DEFAULT_REQUEST_TTL.min(max_ttl));
    if requested.is_zero() {
        return deny(trace, "the TTL must be at least 1s".into());
    }
    if requested > max_ttl {
        return deny(
            trace,
            format!(
                "the requested TTL {} exceeds the maximum of {} for {host}",
                fmt_duration(requested),
                fmt_duration(max_ttl)
            ),
        );
    }
    let mut ttl = requested;
    trace.push(format!("TTL {} is within the maximum of {}", fmt_duration(requested), fmt_duration(max_ttl)));
    if let Some(end) = window_end {
        let left_ms = end.as_millisecond().saturating_sub(now.as_millisecond());
        let left = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)).max(Duration::from_secs(1));
        if left < ttl {
            ttl = left;
            trace.push(format!("TTL shortened to {} so access ends when the time window closes", fmt_duration(ttl)));
        }
    }

    // Why.
    let reason_required = applicable.iter().any(|p| p.policy.reason_required);
    if reason_required && ask.reason.trim().is_empty() {
        return deny(trace, format!("a reason is required for {host}"));
    }

    // How often.
    for p in &applicable {
        if let Some(r) = &p.policy.rate_limit {
            let since = now.as_millisecond().saturating_sub(i64::try_from(r.per.as_millis()).unwrap_or(i64::MAX));
            let made = recent_requests.iter().filter(|t| **t > since && **t <= now.as_millisecond()).count();
            if made >= usize::try_from(r.requests).unwrap_or(usize::MAX) {
                return deny(
                    trace,
                    format!(
                        "rate limit reached: group {} allows {} requests per {} and you made {made}",
                        p.group,
                        r.requests,
                        fmt_duration(r.per)
                    ),
                );
            }
            trace.push(format!(
                "{made} of {} requests per {} used (group {})",
                r.requests,
                fmt_duration(r.per),
                p.group
            ));
        }
    }

    // Who must agree.
    let mut approvals = applicable.iter().map(|p| p.policy.approvals).max().unwrap_or(1);
    if !ask.elevate_groups.is_empty() && approvals == 0 {
        approvals = 1;
        trace.push("elevation always needs a human approval".into());
    }
    if approvals == 0 {
        trace.push("no approval needed: allow".into());
        return Evaluation { decision: Decision::Allow { ttl, policies: names }, trace };
    }
    let approver_sets: Vec<ApproverSet> = applicable
        .iter()
        .filter(|p| p.policy.approvals > 0 || applicable.iter().all(|q| q.policy.approvals == 0))
        .map(|p| ApproverSet {
            policy: p.group.clone(),
            users: p.policy.approver_users.clone(),
            roles: p.policy.approver_roles.clone(),
        })
        .collect();
    let rule = ApprovalRule { approvals, approver_sets, reason_required, policies: names };
    trace.push(format!("needs {} (never the requester)", rule.describe()));
    Evaluation { decision: Decision::NeedsApproval { ttl, rule }, trace }
}

/// An instant as an operator writes it for `policy test --at`: Unix
/// milliseconds, RFC 3339 (`2026-06-05T09:30:00+02:00`, `…Z`), or a civil
/// time in a zone (`2026-06-05T09:30[Europe/Oslo]`). Unix milliseconds out.
pub fn parse_instant(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t.as_millisecond());
    }
    if let Ok(z) = s.parse::<jiff::Zoned>() {
        return Ok(z.timestamp().as_millisecond());
    }
    Err(format!(
        "{s:?} is not a time: use RFC 3339 (2026-06-05T09:30:00+02:00) or a zoned time (2026-06-05T09:30[Europe/Oslo])"
    ))
}

// ---------------------------------------------------------------------------
// Approvals

/// Who is deciding on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approver {
    /// A human user, through SSH or on their behalf.
    User { name: String, role: Role },
    /// The admin API token holder. Eligible for any rule (the same token can
    /// make grants directly), and never the requester: requests belong to
    /// users and agents. Counts as one approver.
    Admin,
}

impl Approver {
    /// A stable key: one vote per approver.
    pub fn key(&self) -> String {
        match self {
            Approver::User { name, .. } => format!("user:{name}"),
            Approver::Admin => "admin:admin".into(),
        }
    }
}

/// May `approver` decide on a request by `requester_kind:requester_name`
/// under `rule`? Nobody decides their own request. Agents never decide:
/// there is no agent approver.
pub fn may_decide(
    rule: &ApprovalRule,
    requester_kind: &str,
    requester_name: &str,
    approver: &Approver,
) -> Result<(), String> {
    match approver {
        Approver::Admin => Ok(()),
        Approver::User { name, role } => {
            if requester_kind == "user" && requester_name == name {
                return Err("you cannot approve or deny your own request".into());
            }
            match rule.approver_sets.iter().find(|s| !s.admits(name, *role)) {
                None => Ok(()),
                Some(s) => {
                    Err(format!("you are not an approver for this request (group {} needs {})", s.policy, s.describe()))
                }
            }
        }
    }
}

/// One recorded vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    pub approver_key: String,
    pub approve: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    Approved,
    Denied,
    Pending { have: u32, need: u32 },
}

/// Where a request stands after `votes` (each from an eligible approver).
/// One denial ends it; otherwise it needs `rule.approvals` distinct approvers.
pub fn tally(rule: &ApprovalRule, votes: &[Vote]) -> Tally {
    if votes.iter().any(|v| !v.approve) {
        return Tally::Denied;
    }
    let distinct: BTreeSet<&str> = votes.iter().filter(|v| v.approve).map(|v| v.approver_key.as_str()).collect();
    let have = u32::try_from(distinct.len()).unwrap_or(u32::MAX);
    if have >= rule.approvals { Tally::Approved } else { Tally::Pending { have, need: rule.approvals } }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn human(name: &str) -> Identity {
        Identity::Human { name: name.into(), role: Role::User }
    }

    fn agent(groups: &[&str], risk: Risk) -> Identity {
        Identity::Agent { name: "bot".into(), groups: groups.iter().map(|s| s.to_string()).collect(), risk }
    }

    fn ask(host: &str, groups: &[&str], login: &str) -> AccessAsk {
        AccessAsk {
            host: HostFacts { name: host.into(), groups: groups.iter().map(|s| s.to_string()).collect() },
            login: login.into(),
            ttl: None,
            reason: "deploy".into(),
            elevate_groups: Vec::new(),
        }
    }

    fn bind(group: &str, toml: &str) -> BoundPolicy {
        BoundPolicy { group: group.into(), policy: Policy::parse(toml).unwrap() }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    const OSLO_OFFICE: &str = r#"
approvals = 0
[[window]]
days = ["mon-fri"]
start = "09:00"
end = "18:00"
time_zone = "Europe/Oslo"
"#;

    fn run(id: &Identity, a: &AccessAsk, p: &[BoundPolicy], now: &str) -> Decision {
        decide(id, a, p, at(now), ip("127.0.0.1"), &[])
    }

    fn is_allow(d: &Decision) -> bool {
        matches!(d, Decision::Allow { .. })
    }

    fn deny_reason(d: &Decision) -> String {
        match d {
            Decision::Deny { reason, .. } => reason.clone(),
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn default_policy_needs_one_approver_other_than_the_requester() {
        let d = run(&human("alice"), &ask("web-1", &["staging"], "root"), &[], "2026-06-01T12:00:00Z");
        let Decision::NeedsApproval { ttl, rule } = d else { panic!("{d:?}") };
        assert_eq!(ttl, DEFAULT_REQUEST_TTL);
        assert_eq!(rule.approvals, 1);
        assert_eq!(rule.policies, vec!["default".to_string()]);
        assert_eq!(
            may_decide(&rule, "user", "alice", &Approver::User { name: "alice".into(), role: Role::Approver })
                .unwrap_err(),
            "you cannot approve or deny your own request"
        );
        assert!(
            may_decide(&rule, "user", "alice", &Approver::User { name: "bob".into(), role: Role::Approver }).is_ok()
        );
        assert!(may_decide(&rule, "user", "alice", &Approver::User { name: "bob".into(), role: Role::Admin }).is_ok());
        assert!(
            may_decide(&rule, "user", "alice", &Approver::User { name: "carol".into(), role: Role::User }).is_err()
        );
        assert!(may_decide(&rule, "user", "alice", &Approver::Admin).is_ok());
        // up to 8 h, not more
        let mut a = ask("web-1", &[], "root");
        a.ttl = Some(Duration::from_secs(8 * 3600));
        assert!(matches!(run(&human("alice"), &a, &[], "2026-06-01T12:00:00Z"), Decision::NeedsApproval { .. }));
        a.ttl = Some(Duration::from_secs(8 * 3600 + 1));
        assert!(
            deny_reason(&run(&human("alice"), &a, &[], "2026-06-01T12:00:00Z")).contains("exceeds the maximum of 8h")
        );
        // agents may ask too under the default (in their groups)
        let d = run(&agent(&["staging"], Risk::High), &ask("web-1", &["staging"], "root"), &[], "2026-06-01T12:00:00Z");
        assert!(matches!(d, Decision::NeedsApproval { .. }), "{d:?}");
    }

    #[test]
    fn time_window_edges() {
        let p = [bind("office", OSLO_OFFICE)];
        let a = ask("web-1", &["office"], "root");
        // Wednesday 2026-06-03, Oslo is UTC+2 (CEST).
        for (utc, inside) in [
            ("2026-06-03T06:59:59Z", false), // 08:59:59
            ("2026-06-03T07:00:00Z", true),  // 09:00:00
            ("2026-06-03T15:59:59Z", true),  // 17:59:59
            ("2026-06-03T16:00:00Z", false), // 18:00:00
        ] {
            let d = run(&human("alice"), &a, &p, utc);
            assert_eq!(is_allow(&d), inside, "{utc}: {d:?}");
            if !inside {
                let r = deny_reason(&d);
                assert!(
                    r.contains("outside the allowed time window for group office (mon-fri 09:00–18:00 Europe/Oslo"),
                    "{r}"
                );
            }
        }
        // Saturday: never.
        let r = deny_reason(&run(&human("alice"), &a, &p, "2026-06-06T10:00:00Z"));
        assert!(r.contains("it is sat 12:00:00 there"), "{r}");
    }

    #[test]
    fn ttl_is_cut_at_the_window_close() {
        let p = [bind("office", OSLO_OFFICE)];
        let mut a = ask("web-1", &["office"], "root");
        a.ttl = Some(Duration::from_secs(3600));
        // 17:50 local: ten minutes left.
        let d = run(&human("alice"), &a, &p, "2026-06-03T15:50:00Z");
        assert_eq!(d, Decision::Allow { ttl: Duration::from_secs(600), policies: vec!["office".into()] });
    }

    #[test]
    fn dst_changes_in_oslo() {
        let p = [bind("office", OSLO_OFFICE)];
        let a = ask("web-1", &["office"], "root");
        // Friday 27 March 2026: CET (UTC+1), 09:00 local is 08:00 UTC.
        assert!(!is_allow(&run(&human("a"), &a, &p, "2026-03-27T07:59:59Z")));
        assert!(is_allow(&run(&human("a"), &a, &p, "2026-03-27T08:00:00Z")));
        // Sunday 29 March 2026 01:00 UTC clocks jump to 03:00. Monday: CEST,
        // 09:00 local is 07:00 UTC.
        assert!(!is_allow(&run(&human("a"), &a, &p, "2026-03-30T06:59:59Z")));
        assert!(is_allow(&run(&human("a"), &a, &p, "2026-03-30T07:00:00Z")));
        assert!(!is_allow(&run(&human("a"), &a, &p, "2026-03-30T16:00:00Z")));
        // Autumn: Sunday 25 October 2026 01:00 UTC clocks go back to 02:00.
        // Monday 26 October: CET again, 09:00 local is 08:00 UTC.
        assert!(!is_allow(&run(&human("a"), &a, &p, "2026-10-26T07:59:59Z")));
        assert!(is_allow(&run(&human("a"), &a, &p, "2026-10-26T08:00:00Z")));

        // A window in the hour that is skipped in spring never opens that day…
        let night = [bind(
            "night",
            "approvals = 0\n[[window]]\ndays = [\"sun\"]\nstart = \"02:00\"\nend = \"03:00\"\ntime_zone = \"Europe/Oslo\"\n",
        )];
        assert!(!is_allow(&run(&human("a"), &a_in("night"), &night, "2026-03-29T00:59:59Z"))); // 01:59:59 CET
        assert!(!is_allow(&run(&human("a"), &a_in("night"), &night, "2026-03-29T01:00:00Z"))); // 03:00:00 CEST
        // …and holds during both passes of the repeated hour in autumn.
        assert!(is_allow(&run(&human("a"), &a_in("night"), &night, "2026-10-25T00:30:00Z"))); // 02:30 CEST
        assert!(is_allow(&run(&human("a"), &a_in("night"), &night, "2026-10-25T01:30:00Z"))); // 02:30 CET
        assert!(!is_allow(&run(&human("a"), &a_in("night"), &night, "2026-10-25T02:00:00Z"))); // 03:00 CET
        // The week before (no change), 02:30 CEST is 00:30 UTC.
        assert!(is_allow(&run(&human("a"), &a_in("night"), &night, "2026-03-22T01:30:00Z"))); // 02:30 CET
    }

    fn a_in(group: &str) -> AccessAsk {
        ask("web-1", &[group], "root")
    }

    #[test]
    fn windows_across_midnight() {
        let p = [bind(
            "ops",
            "approvals = 0\n[[window]]\ndays = [\"fri\"]\nstart = \"22:00\"\nend = \"06:00\"\ntime_zone = \"UTC\"\n",
        )];
        let a = a_in("ops");
        assert!(!is_allow(&run(&human("a"), &a, &p, "2026-06-05T21:59:59Z"))); // fri
        assert!(is_allow(&run(&human("a"), &a, &p, "2026-06-05T22:00:00Z")));
        assert!(is_allow(&run(&human("a"), &a, &p, "2026-06-06T05:59:59Z"))); // sat morning, opened fri
        assert!(!is_allow(&run(&human("a"), &a, &p, "2026-06-06T06:00:00Z")));
        assert!(!is_allow(&run(&human("a"), &a, &p, "2026-06-06T23:00:00Z"))); // sat night
        // TTL runs to 06:00 at most.
        let mut a = a;
        a.ttl = Some(Duration::from_secs(8 * 3600));
        let d = run(&human("a"), &a, &p, "2026-06-06T05:00:00Z");
        assert_eq!(d, Decision::Allow { ttl: Duration::from_secs(3600), policies: vec!["ops".into()] });
    }

    #[test]
    fn overlapping_groups_take_the_strictest_combination() {
        let staging = bind(
            "staging",
            "logins = [\"root\", \"deploy\"]\nmax_ttl = \"4h\"\napprovals = 1\napprover_roles = [\"approver\"]\n",
        );
        let pci = bind(
            "pci",
            "logins = [\"deploy\", \"audit\"]\nmax_ttl = \"1h\"\napprovals = 2\napprovers = [\"carol\", \"dave\"]\napprover_roles = [\"admin\"]\nreason_required = true\nagents = false\nsource_cidrs = [\"10.0.0.0/8\"]\n",
        );
        let all = [staging.clone(), pci.clone()];
        let mut a = ask("db-1", &["staging", "pci"], "root");
        a.ttl = Some(Duration::from_secs(1800));
        // logins: intersection
        assert!(
            deny_reason(&decide(&human("alice"), &a, &all, at("2026-06-03T12:00:00Z"), ip("10.1.2.3"), &[]))
                .contains("login root is not allowed on db-1 (allowed: deploy)")
        );
        a.login = "deploy".into();
        // CIDR: both must hold (staging has none, pci has 10/8)
        assert!(
            deny_reason(&decide(&human("alice"), &a, &all, at("2026-06-03T12:00:00Z"), ip("192.168.1.1"), &[]))
                .contains("your address 192.168.1.1 is not in the allowed networks for group pci (10.0.0.0/8)")
        );
        // TTL: min
        a.ttl = Some(Duration::from_secs(7200));
        assert!(
            deny_reason(&decide(&human("alice"), &a, &all, at("2026-06-03T12:00:00Z"), ip("10.1.2.3"), &[]))
                .contains("exceeds the maximum of 1h")
        );
        a.ttl = None;
        // reason: required if any requires it
        a.reason = "  ".into();
        assert!(
            deny_reason(&decide(&human("alice"), &a, &all, at("2026-06-03T12:00:00Z"), ip("10.1.2.3"), &[]))
                .contains("a reason is required")
        );
        a.reason = "fix".into();
        // approvals: max, approvers must satisfy both sets
        let d = decide(&human("alice"), &a, &all, at("2026-06-03T12:00:00Z"), ip("10.1.2.3"), &[]);
        let Decision::NeedsApproval { ttl, rule } = d else { panic!("{d:?}") };
        assert_eq!(ttl, Duration::from_secs(3600), "default request TTL capped at the strictest max");
        assert_eq!(rule.approvals, 2);
        assert!(rule.reason_required);
        let bob_approver = Approver::User { name: "bob".into(), role: Role::Approver };
        let carol_approver = Approver::User { name: "carol".into(), role: Role::Approver };
        let erin_admin = Approver::User { name: "erin".into(), role: Role::Admin };
        assert!(may_decide(&rule, "user", "alice", &bob_approver).unwrap_err().contains("group pci"));
        assert!(may_decide(&rule, "user", "alice", &carol_approver).is_ok());
        assert!(may_decide(&rule, "user", "alice", &erin_admin).unwrap_err().contains("group staging"));
        // agents: allowed only if all allow
        let bot = agent(&["staging", "pci"], Risk::Low);
        assert!(
            deny_reason(&decide(&bot, &a, &all, at("2026-06-03T12:00:00Z"), ip("10.1.2.3"), &[]))
                .contains("agents may not request access to hosts in group pci")
        );
        assert!(!matches!(
            decide(&bot, &a, &[staging], at("2026-06-03T12:00:00Z"), ip("10.1.2.3"), &[]),
            Decision::Deny { .. }
        ));
        // a group without a policy adds nothing; a policy on an unrelated group is ignored
        let d = decide(
            &human("alice"),
            &ask("web-1", &["staging", "misc"], "root"),
            std::slice::from_ref(&pci),
            at("2026-06-03T12:00:00Z"),
            None,
            &[],
        );
        assert!(
            matches!(d, Decision::NeedsApproval { ref rule, .. } if rule.policies == vec!["default".to_string()]),
            "{d:?}"
        );
    }

    #[test]
    fn windows_in_two_groups_must_both_hold() {
        let a = bind("a", "approvals = 0\n[[window]]\nstart = \"08:00\"\nend = \"12:00\"\ntime_zone = \"UTC\"\n");
        let b = bind("b", "approvals = 0\n[[window]]\nstart = \"10:00\"\nend = \"16:00\"\ntime_zone = \"UTC\"\n");
        let p = [a, b];
        let x = ask("h", &["a", "b"], "root");
        assert!(!is_allow(&run(&human("u"), &x, &p, "2026-06-03T09:00:00Z")));
        assert!(is_allow(&run(&human("u"), &x, &p, "2026-06-03T10:00:00Z")));
        assert!(!is_allow(&run(&human("u"), &x, &p, "2026-06-03T12:00:00Z")));
        // TTL cut at the earlier close (12:00).
        let d = run(&human("u"), &x, &p, "2026-06-03T11:30:00Z");
        assert_eq!(d, Decision::Allow { ttl: Duration::from_secs(1800), policies: vec!["a".into(), "b".into()] });
    }

    #[test]
    fn canary_in_any_group_trips_and_reads_like_an_unknown_host() {
        let p = [bind("staging", "approvals = 0\n"), bind("honeypot", "canary = true\n")];
        let d = run(&human("alice"), &ask("db-9", &["staging", "honeypot"], "root"), &p, "2026-06-03T12:00:00Z");
        assert_eq!(d, Decision::Deny { reason: no_such_host("db-9"), canary: true });
        // agents too, even ones scoped elsewhere
        let d = run(&agent(&["x"], Risk::Low), &ask("db-9", &["honeypot"], "root"), &p, "2026-06-03T12:00:00Z");
        assert!(matches!(d, Decision::Deny { canary: true, .. }));
        // the serialized decision does not say canary
        let json = serde_json::to_string(&d).unwrap();
        assert!(!json.contains("canary"), "{json}");
    }

    #[test]
    fn rate_limit_edges() {
        let p = [bind("s", "approvals = 0\n[rate_limit]\nrequests = 3\nper = \"1h\"\n")];
        let now = at("2026-06-03T12:00:00Z");
        let ms = now.as_millisecond();
        let a = a_in("s");
        let hour = 3_600_000;
        // two in the last hour: allowed
        assert!(is_allow(&decide(&human("u"), &a, &p, now, None, &[ms - 10, ms - 20])));
        // three: refused
        let r = deny_reason(&decide(&human("u"), &a, &p, now, None, &[ms - 10, ms - 20, ms - hour + 1]));
        assert!(r.contains("rate limit reached: group s allows 3 requests per 1h and you made 3"), "{r}");
        // one of them exactly an hour ago no longer counts
        assert!(is_allow(&decide(&human("u"), &a, &p, now, None, &[ms - 10, ms - 20, ms - hour])));
        // the strictest of two caps wins
        let two = [p[0].clone(), bind("t", "approvals = 0\n[rate_limit]\nrequests = 1\nper = \"10m\"\n")];
        let b = ask("h", &["s", "t"], "root");
        assert!(is_allow(&decide(&human("u"), &b, &two, now, None, &[ms - 11 * 60_000])));
        assert!(deny_reason(&decide(&human("u"), &b, &two, now, None, &[ms - 9 * 60_000])).contains("group t"));
    }

    #[test]
    fn source_cidrs() {
        let p = [bind("s", "approvals = 0\nsource_cidrs = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]\n")];
        let a = a_in("s");
        let now = at("2026-06-03T12:00:00Z");
        assert!(is_allow(&decide(&human("u"), &a, &p, now, ip("10.9.8.7"), &[])));
        assert!(is_allow(&decide(&human("u"), &a, &p, now, ip("2001:db8::1"), &[])));
        assert!(is_allow(&decide(&human("u"), &a, &p, now, ip("192.0.2.7"), &[])));
        assert!(
            deny_reason(&decide(&human("u"), &a, &p, now, ip("127.0.0.1"), &[])).contains("your address 127.0.0.1")
        );
        assert!(deny_reason(&decide(&human("u"), &a, &p, now, None, &[])).contains("unknown"));
    }

    #[test]
    fn agents_scope_risk_and_elevation() {
        let p = [bind("prod", "approvals = 0\nagent_max_risk = \"medium\"\n")];
        let now = at("2026-06-03T12:00:00Z");
        let a = ask("db-1", &["prod"], "root");
        let r = deny_reason(&decide(&agent(&["staging"], Risk::Low), &a, &p, now, None, &[]));
        assert_eq!(r, "agent bot is scoped to groups [staging], host db-1 is in [prod]");
        assert!(deny_reason(&decide(&agent(&["prod"], Risk::High), &a, &p, now, None, &[])).contains("risk high"));
        assert!(is_allow(&decide(&agent(&["prod"], Risk::Medium), &a, &p, now, None, &[])));
        // elevation into prod: possible, but always needs a human
        let mut e = a.clone();
        e.elevate_groups = vec!["prod".into()];
        let d = decide(&agent(&["staging"], Risk::Low), &e, &p, now, None, &[]);
        assert!(matches!(d, Decision::NeedsApproval { ref rule, .. } if rule.approvals == 1), "{d:?}");
        // humans do not elevate
        assert!(deny_reason(&decide(&human("u"), &e, &p, now, None, &[])).contains("elevation is for agents"));
    }

    #[test]
    fn self_approval_and_tally() {
        let rule = ApprovalRule {
            approvals: 2,
            approver_sets: vec![ApproverSet { policy: "prod".into(), users: vec![], roles: vec!["approver".into()] }],
            reason_required: false,
            policies: vec!["prod".into()],
        };
        let me = Approver::User { name: "alice".into(), role: Role::Approver };
        assert!(may_decide(&rule, "user", "alice", &me).is_err(), "an approver cannot approve their own request");
        // an agent's request may be approved by any eligible human
        assert!(may_decide(&rule, "agent", "alice", &me).is_ok());
        let v = |k: &str, ok: bool| Vote { approver_key: k.into(), approve: ok };
        assert_eq!(tally(&rule, &[]), Tally::Pending { have: 0, need: 2 });
        assert_eq!(tally(&rule, &[v("user:bob", true)]), Tally::Pending { have: 1, need: 2 });
        assert_eq!(tally(&rule, &[v("user:bob", true), v("user:bob", true)]), Tally::Pending { have: 1, need: 2 });
        assert_eq!(tally(&rule, &[v("user:bob", true), v("admin:admin", true)]), Tally::Approved);
        assert_eq!(tally(&rule, &[v("user:bob", true), v("user:carol", false)]), Tally::Denied);
    }

    #[test]
    fn parse_errors_are_clear() {
        let e = Policy::parse("max_tll = \"1h\"\n").unwrap_err();
        assert!(e.contains("unknown field") && e.contains("max_tll"), "{e}");
        let e =
            Policy::parse("[[window]]\nstart = \"09:00\"\nend = \"18:00\"\ntime_zone = \"Europe/Olso\"\n").unwrap_err();
        assert!(e.contains("Europe/Olso") && e.contains("not a known time zone"), "{e}");
        let e = Policy::parse("[[window]]\nstart = \"9\"\nend = \"18:00\"\ntime_zone = \"UTC\"\n").unwrap_err();
        assert!(e.contains("HH:MM"), "{e}");
        let e =
            Policy::parse("[[window]]\ndays=[\"funday\"]\nstart = \"09:00\"\nend = \"18:00\"\ntime_zone = \"UTC\"\n")
                .unwrap_err();
        assert!(e.contains("funday"), "{e}");
        let e = Policy::parse("[window]\nstart = \"09:00\"\n").unwrap_err();
        assert!(!e.is_empty());
        let e = Policy::parse("approvals = 3\napprovers = [\"a\", \"b\"]\n").unwrap_err();
        assert!(e.contains("only 2 approver"), "{e}");
        let e = Policy::parse("approver_roles = [\"boss\"]\n").unwrap_err();
        assert!(e.contains("approver_roles"), "{e}");
        let e = Policy::parse("source_cidrs = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(e.contains("source_cidrs"), "{e}");
        let e = Policy::parse("logins = [\"Root\"]\n").unwrap_err();
        assert!(e.contains("logins"), "{e}");
        let e = Policy::parse("max_ttl = \"forever\"\n").unwrap_err();
        assert!(e.contains("max_ttl"), "{e}");
        let e = Policy::parse("[rate_limit]\nrequests = 0\nper = \"1h\"\n").unwrap_err();
        assert!(e.contains("rate_limit.requests"), "{e}");
        let e = Policy::parse("[rate_limit]\nrequests = 1\nper = \"1h\"\nburst = 2\n").unwrap_err();
        assert!(e.contains("burst"), "{e}");
        // and a full one parses and describes itself
        let p = Policy::parse(
            "logins = [\"deploy\"]\nmax_ttl = \"2h\"\napprovals = 2\napprover_roles = [\"approver\"]\nreason_required = true\n\
             source_cidrs = [\"10.0.0.0/8\"]\nagents = false\n[rate_limit]\nrequests = 10\nper = \"1h\"\n\
             [[window]]\ndays = [\"mon-fri\"]\nstart = \"09:00\"\nend = \"18:00\"\ntime_zone = \"Europe/Oslo\"\n",
        )
        .unwrap();
        let d = p.describe().join("\n");
        for want in [
            "logins: deploy",
            "max TTL: 2h",
            "approval: 2 from roles [approver]",
            "from: 10.0.0.0/8",
            "when: mon-fri 09:00–18:00 Europe/Oslo",
            "rate limit: 10 requests per 1h",
            "agents: may not request",
        ] {
            assert!(d.contains(want), "{want} in {d}");
        }
        assert_eq!(describe_days(&parse_days(&["sat-mon".into()]).unwrap()), "mon,sat-sun");
    }

    #[test]
    fn instants() {
        assert_eq!(parse_instant("2026-06-05T07:30:00Z").unwrap(), at("2026-06-05T07:30:00Z").as_millisecond());
        assert_eq!(parse_instant("2026-06-05T09:30:00+02:00").unwrap(), at("2026-06-05T07:30:00Z").as_millisecond());
        assert_eq!(
            parse_instant("2026-06-05T09:30[Europe/Oslo]").unwrap(),
            at("2026-06-05T07:30:00Z").as_millisecond()
        );
        assert_eq!(parse_instant("1700000000000").unwrap(), 1_700_000_000_000);
        assert!(parse_instant("tomorrow").is_err());
    }

    #[test]
    fn evaluation_explains_itself() {
        let p = [bind("office", OSLO_OFFICE)];
        let e = evaluate(&human("alice"), &a_in("office"), &p, at("2026-06-03T12:00:00Z"), None, &[]);
        assert!(matches!(e.decision, Decision::Allow { .. }));
        let t = e.trace.join("\n");
        assert!(t.contains("policies of groups [office] apply"), "{t}");
        assert!(t.contains("inside the time window"), "{t}");
        assert!(t.contains("no approval needed"), "{t}");
    }
}
