//! The warm pool on this host (issue 18, `docs/design.md` "Warm pool"): pooled sandboxes
//! started with an empty slot at their mount target and the static waiter as entrypoint, claimed
//! by attaching the chat's volume onto the slot and handing the waiter the claim.
//!
//! What outlives the process lives under `pool_root`: `slots/` (the `rshared` slots, see
//! `pool::slots`), `claims/` (each pooled sandbox's FIFO) and `records/` (the chat's labels of
//! each claimed sandbox, which the engine cannot hold: labels are fixed at create). The records
//! are cached in memory; `list_managed` and `list_chat` read a claimed sandbox's labels from them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use sandboxd_domain::{AgentId, ChatId, ContainerId};
use sandboxd_pool_waiter::Claim;
use sandboxd_usecase::ports::{NewSandbox, SandboxLabels};
use tokio::sync::OnceCell;

use crate::pool::claim::{ClaimChannel, ClaimSendError};
use crate::pool::slots::{SlotDirectory, SlotError};

/// How long a release retries a detach the kernel still finds busy (the sandbox's processes are
/// gone once the engine's remove returns, but the last reference may drop a moment later).
const DETACH_RETRY_FOR: Duration = Duration::from_secs(2);
const DETACH_RETRY_EVERY: Duration = Duration::from_millis(20);

/// Where the pool of one deployment keeps its state on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// The root of `slots/`, `claims/` and `records/`; must survive a restart of sandboxd (not
    /// a tmpfs that a restart clears, but mounts are lost on reboot anyway).
    pub root: PathBuf,
    /// The static waiter binary, bind-mounted read-only into every pooled sandbox.
    pub waiter: Option<PathBuf>,
}

/// The claimed sandbox a record describes: its container and the labels a cold one would carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub container_id: ContainerId,
    pub slot: String,
    pub labels: HashMap<String, String>,
}

/// The host side of the pool: directories, the records cache, and the slots in use by a call of
/// this process (which recovery leaves alone).
#[derive(Debug)]
pub(super) struct PoolHost {
    config: PoolConfig,
    /// Prepared on first use: the slots root is made `rshared` only when a pool is used.
    slots: OnceCell<SlotDirectory>,
    /// Claimed sandboxes by container, loaded from `records/` on first use.
    records: OnceCell<Mutex<HashMap<ContainerId, Record>>>,
    busy: Mutex<HashSet<String>>,
}

/// Marks a slot as worked on by this process until dropped (also when the call is abandoned).
pub(super) struct BusySlot<'a> {
    host: &'a PoolHost,
    slot: String,
}

impl Drop for BusySlot<'_> {
    fn drop(&mut self) {
        lock(&self.host.busy).remove(&self.slot);
    }
}

impl PoolHost {
    pub(super) fn new(config: PoolConfig) -> Self {
        Self {
            config,
            slots: OnceCell::new(),
            records: OnceCell::new(),
            busy: Mutex::new(HashSet::new()),
        }
    }

    pub(super) fn waiter(&self) -> Option<&Path> {
        self.config.waiter.as_deref()
    }

    fn claims_dir(&self) -> PathBuf {
        self.config.root.join("claims")
    }

    fn records_dir(&self) -> PathBuf {
        self.config.root.join("records")
    }

    /// The prepared slots directory.
    pub(super) async fn slots(&self) -> Result<&SlotDirectory, SlotError> {
        self.slots
            .get_or_try_init(|| async {
                SlotDirectory::prepare(&self.config.root.join("slots")).await
            })
            .await
    }

    /// The slots directory without preparing it (releases work on an unprepared root too: a
    /// detach and an `rmdir` need no shared mount).
    pub(super) fn slots_unprepared(&self) -> Result<SlotDirectory, SlotError> {
        match self.slots.get() {
            Some(slots) => Ok(slots.clone()),
            None => SlotDirectory::unprepared(&self.config.root.join("slots")),
        }
    }

    pub(super) fn channel(&self, slot: &str) -> Result<ClaimChannel, ClaimSendError> {
        ClaimChannel::at(&self.claims_dir(), slot)
    }

    pub(super) fn create_channel(&self, slot: &str) -> Result<ClaimChannel, ClaimSendError> {
        std::fs::create_dir_all(self.claims_dir()).map_err(|source| ClaimSendError::Io {
            action: "create",
            path: self.claims_dir(),
            source,
        })?;
        ClaimChannel::create(&self.claims_dir(), slot)
    }

    /// Marks `slot` busy; `None` when another call of this process works on it.
    pub(super) fn mark_busy(&self, slot: &str) -> Option<BusySlot<'_>> {
        lock(&self.busy).insert(slot.to_owned()).then(|| BusySlot {
            host: self,
            slot: slot.to_owned(),
        })
    }

    /// The slots some call of this process works on now.
    pub(super) fn busy_snapshot(&self) -> HashSet<String> {
        lock(&self.busy).clone()
    }

    async fn records(&self) -> &Mutex<HashMap<ContainerId, Record>> {
        self.records
            .get_or_init(|| async {
                let dir = self.records_dir();
                let loaded = tokio::task::spawn_blocking(move || load_records(&dir))
                    .await
                    .unwrap_or_default();
                Mutex::new(loaded)
            })
            .await
    }

    /// The record of a claimed container, if it is one.
    pub(super) async fn record_of(&self, container_id: &ContainerId) -> Option<Record> {
        lock(self.records().await).get(container_id).cloned()
    }

    /// Every claimed container of `chat_id` (by its record).
    pub(super) async fn claimed_of_chat(
        &self,
        chat_id: &ChatId,
        labels: &super::labels::LabelKeys,
    ) -> Vec<ContainerId> {
        lock(self.records().await)
            .values()
            .filter(|record| labels.decode(&record.labels).chat_id == Some(*chat_id))
            .map(|record| record.container_id.clone())
            .collect()
    }

    /// Every record, by slot.
    pub(super) async fn all_records(&self) -> HashMap<String, Record> {
        lock(self.records().await)
            .values()
            .map(|record| (record.slot.clone(), record.clone()))
            .collect()
    }

    /// Writes the record of a claim (to a temporary name, then renamed into place: a crash
    /// leaves the old file or the new one, never half of one) and caches it.
    pub(super) async fn write_record(&self, record: Record) -> Result<(), std::io::Error> {
        let dir = self.records_dir();
        let slot = record.slot.clone();
        let body = encode_record(&record);
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let temporary = dir.join(format!(".{slot}.tmp"));
            std::fs::write(&temporary, body)?;
            std::fs::rename(&temporary, dir.join(format!("{slot}.record")))
        })
        .await
        .map_err(std::io::Error::other)??;
        lock(self.records().await).insert(record.container_id.clone(), record);
        Ok(())
    }

    /// Deletes a slot's record (missing is deleted) and forgets it.
    pub(super) async fn delete_record(&self, slot: &str) -> Result<(), std::io::Error> {
        let path = self.records_dir().join(format!("{slot}.record"));
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        lock(self.records().await).retain(|_, record| record.slot != slot);
        Ok(())
    }

    /// The slot names that exist on disk (slots, channels or records), for recovery.
    pub(super) async fn known_slots(&self) -> HashSet<String> {
        let dirs = [
            self.config.root.join("slots"),
            self.claims_dir(),
            self.records_dir(),
        ];
        tokio::task::spawn_blocking(move || {
            let mut names = HashSet::new();
            for dir in dirs {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let name = name.strip_suffix(".record").unwrap_or(&name).to_owned();
                    if !name.starts_with('.') {
                        names.insert(name);
                    }
                }
            }
            names
        })
        .await
        .unwrap_or_default()
    }

    /// Releases everything of `slot` but its container (removed first by the caller): detach
    /// (retrying a busy mount for a moment), remove the slot and the channel, delete the record
    /// last, so a release that fails half-way is found again by recovery.
    pub(super) async fn release(&self, slot: &str) -> Result<(), ReleaseError> {
        let slots = self.slots_unprepared()?;
        let deadline = tokio::time::Instant::now() + DETACH_RETRY_FOR;
        loop {
            match slots.delete(slot).await {
                Ok(()) => break,
                Err(SlotError::Busy { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(DETACH_RETRY_EVERY).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        self.channel(slot)?.remove()?;
        self.delete_record(slot).await?;
        Ok(())
    }
}

/// Why a slot could not be released (it stays for the next recovery).
#[derive(Debug, thiserror::Error)]
pub(super) enum ReleaseError {
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error(transparent)]
    Channel(#[from] ClaimSendError),
    #[error("cannot delete the claim record: {0}")]
    Record(#[from] std::io::Error),
}

/// The claim a pooled sandbox of `spec` gets: the chat's identity in its environment; the
/// profile's command and directory are the waiter's defaults.
pub(super) fn claim_of(identity: [(String, String); 3]) -> Claim {
    Claim {
        env: identity.into(),
        command: Vec::new(),
        working_dir: None,
    }
}

/// The identity a sandbox of `labels` carries in its environment, as a cold one gets it.
pub(super) fn identity_of(labels: &SandboxLabels) -> Option<[(String, String); 3]> {
    let [chat, session, agent] = sandboxd_domain::IDENTITY_ENV;
    Some([
        (chat.to_owned(), labels.chat_id?.to_string()),
        (session.to_owned(), labels.session_id?.to_string()),
        (agent.to_owned(), labels.agent_id.clone()?.to_string()),
    ])
}

/// The identity of `spec`.
pub(super) fn identity_of_spec(spec: &NewSandbox) -> [(String, String); 3] {
    let [chat, session, agent] = sandboxd_domain::IDENTITY_ENV;
    [
        (chat.to_owned(), spec.chat_id.to_string()),
        (session.to_owned(), spec.session_id.to_string()),
        (agent.to_owned(), spec.agent_id.to_string()),
    ]
}

/// A fresh slot name for `agent_id`'s pooled sandbox under deployment `key_prefix`:
/// `{prefix}.{agent}.{random}`, the parts kept to letters, digits and '-' so that the dots
/// separate them unambiguously.
pub(super) fn new_slot_name(key_prefix: &str, agent_id: &AgentId) -> String {
    format!(
        "{}.{}.{:012x}",
        name_part(key_prefix),
        name_part(agent_id.as_str()),
        rand::random::<u64>() >> 16
    )
}

/// Whether `slot` belongs to deployment `key_prefix` (other deployments sharing the root are
/// left alone).
pub(super) fn is_own_slot(key_prefix: &str, slot: &str) -> bool {
    slot.split('.').next() == Some(name_part(key_prefix).as_str())
}

fn name_part(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect()
}

/// `container_id`, `slot`, then the labels: one `key=value` per line (no value of a label holds a
/// newline: ids, a validated path, timestamps).
fn encode_record(record: &Record) -> String {
    let mut body = format!(
        "container_id={}\nslot={}\n",
        record.container_id, record.slot
    );
    let mut labels: Vec<_> = record.labels.iter().collect();
    labels.sort();
    for (key, value) in labels {
        body.push_str(&format!("label.{key}={value}\n"));
    }
    body
}

fn decode_record(body: &str) -> Option<Record> {
    let mut container_id = None;
    let mut slot = None;
    let mut labels = HashMap::new();
    for line in body.lines() {
        let (key, value) = line.split_once('=')?;
        match key {
            "container_id" => container_id = ContainerId::parse(value).ok(),
            "slot" => slot = Some(value.to_owned()),
            other => {
                labels.insert(other.strip_prefix("label.")?.to_owned(), value.to_owned());
            }
        }
    }
    Some(Record {
        container_id: container_id?,
        slot: slot?,
        labels,
    })
}

fn load_records(dir: &Path) -> HashMap<ContainerId, Record> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".record"))
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter_map(|body| decode_record(&body))
        .map(|record| (record.container_id.clone(), record))
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_record_round_trips_and_a_damaged_one_is_refused() {
        let record = Record {
            container_id: ContainerId::parse("abc123").unwrap(),
            slot: "sandboxd-web-0123456789ab".to_owned(),
            labels: HashMap::from([
                ("sandboxd.chat_id".to_owned(), "c".to_owned()),
                (
                    "sandboxd.volume_host_path".to_owned(),
                    "/srv/a=b".to_owned(),
                ),
            ]),
        };
        let body = encode_record(&record);
        assert_eq!(decode_record(&body), Some(record));
        assert_eq!(decode_record("slot=x\n"), None);
        assert_eq!(decode_record("container_id=abc\nslot=x\nnonsense\n"), None);
    }

    #[test]
    fn slot_names_are_plain_unique_and_owned_by_their_deployment() {
        let agent = AgentId::parse("web").unwrap();
        let a = new_slot_name("sandboxd-e2e", &agent);
        let b = new_slot_name("sandboxd-e2e", &agent);
        assert_ne!(a, b);
        assert!(crate::pool::is_plain_name(&a), "{a}");
        assert!(is_own_slot("sandboxd-e2e", &a));
        assert!(!is_own_slot("sandboxd", &a));
        assert!(!is_own_slot("sandboxd-e2e-2", &a));
    }
}
