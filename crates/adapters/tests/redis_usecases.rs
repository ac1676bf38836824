//! The use cases end to end on the Redis adapters with the fake runtime and a manual clock,
//! asserting the raw Redis state after each step; and the round trips each one costs, counted
//! with `redis-cli monitor`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis_server::{RedisServer, TestResult, start_store};
use sandboxd_domain::{
    AgentId, AgentProfile, ChatId, ConflictReason, SandboxSession, SessionId, VolumePath,
};
use sandboxd_usecase::testing::{CallLog, FakeRuntime, ManualClock};
use sandboxd_usecase::{
    CleanupExpiredSandboxes, CleanupOptions, CreateResult, CreateSandbox, CreateSandboxCommand,
    CreateSandboxError, DeleteResult, DeleteSandbox, DeleteSandboxCommand, Engines, NodeDirectory,
    Ports, Profiles,
};
use tokio::io::{AsyncBufReadExt, BufReader};

const TTL: Duration = Duration::from_secs(30 * 60);

struct World {
    server: RedisServer,
    prefix: String,
    con: MultiplexedConnection,
    runtime: Arc<FakeRuntime>,
    clock: Arc<ManualClock>,
    create: CreateSandbox,
    delete: DeleteSandbox,
    cleanup: CleanupExpiredSandboxes,
}

impl World {
    async fn new() -> TestResult<Self> {
        let (server, prefix, store) = start_store(|_| {}).await?;
        let runtime = Arc::new(FakeRuntime::new(CallLog::default()));
        let clock = Arc::new(ManualClock::at_epoch());
        let ports = Ports {
            repository: Arc::new(store.repository()),
            locker: Arc::new(store.locker()),
            engines: Engines::single(
                runtime.clone(),
                NodeDirectory::single(sandboxd_domain::NodeId::single()),
            ),
            pool: Some(runtime.clone()),
            clock: clock.clone(),
            events: Arc::new(store.event_log()?),
        };
        let con = server.connection().await?;
        let profiles = Profiles::new(["default", "other"].map(|agent| {
            (
                AgentId::parse(agent).expect("agent"),
                AgentProfile::new("sandboxd/busybox:local"),
            )
        }));
        Ok(Self {
            create: CreateSandbox::new(ports.clone(), profiles.clone(), TTL),
            delete: DeleteSandbox::new(ports.clone()),
            cleanup: CleanupExpiredSandboxes::new(ports, profiles, TTL, CleanupOptions::default()),
            server,
            prefix,
            con,
            runtime,
            clock,
        })
    }

    fn command(chat: ChatId, agent: &str, volume: &str) -> CreateSandboxCommand {
        CreateSandboxCommand {
            chat_id: chat,
            agent_id: AgentId::parse(agent).expect("agent"),
            volume_host_path: VolumePath::parse(volume).expect("volume"),
        }
    }

    /// Every key under the prefix with its type, to compare whole states.
    async fn keys(&mut self) -> TestResult<BTreeMap<String, String>> {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut self.con)
            .await?;
        let mut typed = BTreeMap::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut self.con)
                .await?;
            let short = key
                .trim_start_matches(&format!("{}:", self.prefix))
                .to_owned();
            typed.insert(short, kind);
        }
        Ok(typed)
    }

    async fn zset(&mut self, name: &str) -> TestResult<Vec<(String, i64)>> {
        Ok(redis::cmd("ZRANGE")
            .arg(format!("{}:{name}", self.prefix))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut self.con)
            .await?)
    }

    async fn hash(&mut self, id: &SessionId) -> TestResult<HashMap<String, String>> {
        Ok(redis::cmd("HGETALL")
            .arg(format!("{}:session:{id}", self.prefix))
            .query_async(&mut self.con)
            .await?)
    }

    async fn chat_pointer(&mut self, chat: &ChatId) -> TestResult<Option<String>> {
        Ok(redis::cmd("GET")
            .arg(format!("{}:chat:{chat}", self.prefix))
            .query_async(&mut self.con)
            .await?)
    }

    /// The state one live session `s` of chat `chat` leaves: its hash, pointer and index entries.
    async fn assert_only(&mut self, sessions: &[&SandboxSession]) -> TestResult {
        let mut want = BTreeMap::new();
        for s in sessions {
            want.insert(format!("session:{}", s.session_id), "hash".to_owned());
            want.insert(format!("chat:{}", s.chat_id), "string".to_owned());
            want.insert(format!("agent:{}", s.agent_id), "zset".to_owned());
        }
        if !sessions.is_empty() {
            want.insert("expiry".to_owned(), "zset".to_owned());
            want.insert("sessions".to_owned(), "zset".to_owned());
        }
        let mut keys = self.keys().await?;
        // The event log outlives the sessions (it is trimmed by age, not by them).
        if let Some(kind) = keys.remove("events") {
            assert_eq!(kind, "stream", "the event log is a stream");
        }
        assert_eq!(keys, want, "no lock left behind, nothing else stored");
        let mut expiry: Vec<_> = sessions
            .iter()
            .map(|s| {
                (
                    s.session_id.to_string(),
                    (s.expires_at.unix_timestamp_nanos() / 1_000_000) as i64,
                )
            })
            .collect();
        expiry.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        assert_eq!(self.zset("expiry").await?, expiry);
        for s in sessions {
            assert_eq!(
                self.chat_pointer(&s.chat_id).await?,
                Some(s.session_id.to_string())
            );
            let hash = self.hash(&s.session_id).await?;
            assert_eq!(hash.get("container_id"), Some(&s.container_id.to_string()));
            assert_eq!(hash.get("agent_id"), Some(&s.agent_id.to_string()));
        }
        Ok(())
    }
}

#[tokio::test]
async fn create_reuse_conflict_replace_delete_and_cleanup_on_redis() -> TestResult {
    let mut w = World::new().await?;
    let chat = ChatId::from_uuid(uuid::Uuid::new_v4());

    // Created.
    let created = w
        .create
        .execute(World::command(chat, "default", "/srv/a"))
        .await?;
    assert_eq!(created.result, CreateResult::Created);
    w.assert_only(&[&created.session]).await?;
    let hash = w.hash(&created.session.session_id).await?;
    assert_eq!(
        hash.get("created_at").map(String::as_str),
        Some("1767225600000")
    );
    assert_eq!(
        hash.get("expires_at").map(String::as_str),
        Some("1767227400000")
    );

    // Reused: only the activity changes, no new container.
    w.clock.advance(Duration::from_secs(60));
    let reused = w
        .create
        .execute(World::command(chat, "default", "/srv/a"))
        .await?;
    assert_eq!(
        (reused.result, &reused.session),
        (
            CreateResult::Reused,
            &created
                .session
                .touched_at(sandboxd_usecase::ports::Clock::now(&*w.clock))
        )
    );
    assert_eq!(w.runtime.created_total(), 1);
    w.assert_only(&[&created.session]).await?;

    // Conflict: refused, nothing changes.
    let conflict = w
        .create
        .execute(World::command(chat, "other", "/srv/a"))
        .await;
    assert!(
        matches!(
            conflict,
            Err(CreateSandboxError::Conflict {
                reason: ConflictReason::AgentId,
                ..
            })
        ),
        "{conflict:?}"
    );
    w.assert_only(&[&created.session]).await?;

    // Replaced once expired: old container stopped, old session gone, new one current.
    w.clock.advance(TTL);
    let replaced = w
        .create
        .execute(World::command(chat, "other", "/srv/b"))
        .await?;
    assert_eq!(replaced.result, CreateResult::Replaced);
    assert_ne!(replaced.session.session_id, created.session.session_id);
    assert!(!w.runtime.running().contains(&created.session.container_id));
    assert!(w.hash(&created.session.session_id).await?.is_empty());
    w.assert_only(&[&replaced.session]).await?;

    // Deleted: nothing left at all.
    let deleted = w
        .delete
        .execute(DeleteSandboxCommand { chat_id: chat })
        .await?;
    assert_eq!(deleted.result, DeleteResult::Deleted);
    assert_eq!(deleted.session_id, Some(replaced.session.session_id));
    w.assert_only(&[]).await?;
    let again = w
        .delete
        .execute(DeleteSandboxCommand { chat_id: chat })
        .await?;
    assert_eq!(again.result, DeleteResult::NotFound);

    // Cleanup: two expired chats and one live one; a stale index entry is dropped on the way.
    let (c1, c2, c3) = (
        ChatId::from_uuid(uuid::Uuid::new_v4()),
        ChatId::from_uuid(uuid::Uuid::new_v4()),
        ChatId::from_uuid(uuid::Uuid::new_v4()),
    );
    let s1 = w
        .create
        .execute(World::command(c1, "default", "/srv/1"))
        .await?
        .session;
    let s2 = w
        .create
        .execute(World::command(c2, "default", "/srv/2"))
        .await?
        .session;
    let _: i64 = redis::cmd("ZADD")
        .arg(format!("{}:expiry", w.prefix))
        .arg(0)
        .arg(SessionId::new_random().to_string())
        .query_async(&mut w.con)
        .await?;
    w.clock.advance(TTL + Duration::from_secs(1));
    let s3 = w
        .create
        .execute(World::command(c3, "default", "/srv/3"))
        .await?
        .session;
    let report = w.cleanup.execute().await?;
    let mut cleaned: Vec<_> = report.cleaned.iter().map(|s| s.session_id).collect();
    cleaned.sort();
    let mut want = vec![s1.session_id, s2.session_id];
    want.sort();
    assert_eq!((cleaned, report.error_count), (want, 0));
    w.assert_only(&[&s3]).await?;
    assert_eq!(w.runtime.running(), vec![s3.container_id.clone()]);
    drop(w.server);
    Ok(())
}

/// Top-level commands (not those run inside scripts) between two markers of `redis-cli monitor`.
fn round_trips(lines: &[String], marker: &str, next_marker: &str) -> Vec<String> {
    let start = lines
        .iter()
        .position(|l| l.contains(marker))
        .unwrap_or(lines.len());
    let end = lines
        .iter()
        .position(|l| l.contains(next_marker))
        .unwrap_or(lines.len());
    lines
        .get(start + 1..end)
        .unwrap_or_default()
        .iter()
        .filter(|l| !l.contains(" lua] "))
        .map(|l| {
            let command = l
                .split("] ")
                .nth(1)
                .unwrap_or_default()
                .split(' ')
                .next()
                .unwrap_or_default();
            command.trim_matches('"').to_ascii_lowercase()
        })
        .collect()
}

#[tokio::test]
async fn round_trips_per_operation() -> TestResult {
    let w = World::new().await?;
    // Warm up the script cache so EVALSHA never needs a reload in the measured part.
    let warm = ChatId::from_uuid(uuid::Uuid::new_v4());
    w.create
        .execute(World::command(warm, "default", "/srv/w"))
        .await?;
    w.delete
        .execute(DeleteSandboxCommand { chat_id: warm })
        .await?;

    let mut monitor = tokio::process::Command::new("redis-cli")
        .args(["-p", &w.server.port().to_string(), "monitor"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(monitor.stdout.take().ok_or("no monitor output")?).lines();
    assert_eq!(lines.next_line().await?.as_deref(), Some("OK"));

    let chat = ChatId::from_uuid(uuid::Uuid::new_v4());
    let mark = |name: &'static str| {
        let mut con = w.con.clone();
        async move {
            redis::cmd("ECHO")
                .arg(format!("mark:{name}"))
                .query_async::<String>(&mut con)
                .await
        }
    };
    mark("create").await?;
    w.create
        .execute(World::command(chat, "default", "/srv/a"))
        .await?;
    mark("reuse").await?;
    w.create
        .execute(World::command(chat, "default", "/srv/a"))
        .await?;
    mark("delete").await?;
    w.delete
        .execute(DeleteSandboxCommand { chat_id: chat })
        .await?;
    mark("end").await?;

    let mut seen = Vec::new();
    let read_all = async {
        while let Some(line) = lines.next_line().await? {
            let done = line.contains("mark:end");
            seen.push(line);
            if done {
                break;
            }
        }
        TestResult::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), read_all).await??;
    monitor.kill().await?;

    let create = round_trips(&seen, "mark:create", "mark:reuse");
    let reuse = round_trips(&seen, "mark:reuse", "mark:delete");
    let delete = round_trips(&seen, "mark:delete", "mark:end");
    println!("round trips: create {} {create:?}", create.len());
    println!("round trips: reuse {} {reuse:?}", reuse.len());
    println!("round trips: delete {} {delete:?}", delete.len());
    // A create reads lock-free first (EVALSHA), then lock (SET NX) + re-read + save + release.
    assert_eq!(create, ["evalsha", "set", "evalsha", "evalsha", "evalsha"]);
    // A reuse of a live session is decided by that one lock-free read.
    assert_eq!(reuse, ["evalsha"]);
    // lock + read + delete + release.
    assert_eq!(delete, ["set", "evalsha", "evalsha", "evalsha"]);
    Ok(())
}
