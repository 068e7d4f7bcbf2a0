//! Sessions alive in this process, so that a revocation, a kill, an expiry or
//! a suspension can end them within a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// One live session as the enforcement side sees it.
#[derive(Clone, Debug)]
pub struct LiveSession {
    pub id: String,
    pub grant_id: Option<String>,
    pub subject_kind: String,
    pub subject_id: String,
    pub expires_at: Option<i64>,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl LiveSession {
    pub(crate) fn new(
        id: String,
        grant_id: Option<String>,
        subject_kind: String,
        subject_id: String,
        expires_at: Option<i64>,
    ) -> Self {
        Self {
            id,
            grant_id,
            subject_kind,
            subject_id,
            expires_at,
            cancel: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
        }
    }

    /// Ask the session to end; the first reason given wins.
    pub fn end(&self, reason: &str) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert_with(|| reason.to_string());
        }
        self.cancel.cancel();
    }

    /// Resolves once the session has been told to end.
    pub async fn ended(&self) {
        self.cancel.cancelled().await
    }

    pub fn is_ended(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Why the session was told to end, if it was.
    pub fn end_reason(&self) -> Option<String> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

#[derive(Default)]
pub struct LiveSessions {
    map: Mutex<HashMap<String, LiveSession>>,
}

impl LiveSessions {
    pub(crate) fn insert(&self, s: LiveSession) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(s.id.clone(), s);
        }
    }

    pub(crate) fn remove(&self, id: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(id);
        }
    }

    pub fn get(&self, id: &str) -> Option<LiveSession> {
        self.map.lock().ok().and_then(|m| m.get(id).cloned())
    }

    /// End one session; false if it is not live here.
    pub fn end(&self, id: &str, reason: &str) -> bool {
        match self.get(id) {
            Some(s) => {
                s.end(reason);
                true
            }
            None => false,
        }
    }

    /// End every live session matching `pred`; returns how many.
    pub fn end_where(&self, pred: impl Fn(&LiveSession) -> bool, reason: &str) -> usize {
        let matching: Vec<LiveSession> = match self.map.lock() {
            Ok(m) => m.values().filter(|s| pred(s)).cloned().collect(),
            Err(_) => Vec::new(),
        };
        for s in &matching {
            s.end(reason);
        }
        matching.len()
    }

    pub fn ids(&self) -> Vec<String> {
        self.map.lock().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// End all sessions (shutdown).
    pub fn end_all(&self, reason: &str) -> usize {
        self.end_where(|_| true, reason)
    }
}
