//! Contract checks of ListSandboxes paging: order, exactly-once under churn, and refused tokens.

use std::collections::{BTreeSet, HashMap};

use redis_server::TestResult;
use sandboxd_domain::{AgentId, SandboxSession, SessionId};
use sandboxd_usecase::ports::{ListQuery, RepositoryError};

use crate::*;

pub(crate) async fn paging_returns_each_session_once_in_order(b: &dyn Backend) -> TestResult {
    let mut by_agent: HashMap<&str, BTreeSet<SessionId>> = HashMap::new();
    for i in 0..23 {
        let name = if i % 3 == 0 { "py" } else { "js" };
        let s = session(new_chat(), name, at(i));
        put(b, &s).await?;
        by_agent.entry(name).or_default().insert(s.session_id);
    }
    for page_size in [1, 4, 23, 100] {
        let all = list_all(b, None, page_size).await?;
        let listed: Vec<_> = ids(&all);
        let mut sorted = listed.clone();
        sorted.sort_by_key(ToString::to_string);
        assert_eq!(listed, sorted, "stable order");
        assert_eq!(listed.len(), 23);
        for name in ["py", "js"] {
            let filtered: BTreeSet<_> = ids(&list_all(b, Some(agent(name)), page_size).await?)
                .into_iter()
                .collect();
            assert_eq!(&filtered, &by_agent[name]);
        }
    }
    let exact = b
        .repo()
        .list(&ListQuery {
            state: None,
            agent_id: None,
            page_size: 23,
            page_token: None,
        })
        .await?;
    assert_eq!((exact.sessions.len(), exact.next_page_token), (23, None));
    Ok(())
}

pub(crate) async fn paging_is_exactly_once_under_concurrent_inserts_and_deletes(
    b: &dyn Backend,
) -> TestResult {
    let mut stable = BTreeSet::new();
    for i in 0..40 {
        let s = session(new_chat(), if i % 2 == 0 { "py" } else { "js" }, at(i));
        put(b, &s).await?;
        stable.insert(s.session_id);
    }
    // Churn: sessions added and removed while the listing runs, on both sides of its cursor.
    let churn = async {
        let mut alive: Vec<SandboxSession> = Vec::new();
        for round in 0..60 {
            let s = session(
                new_chat(),
                if round % 2 == 0 { "py" } else { "js" },
                at(round),
            );
            put(b, &s).await?;
            alive.push(s);
            if round % 3 == 2 {
                let gone = alive.remove(alive.len() / 2);
                remove(b, &gone).await?;
            }
            tokio::task::yield_now().await;
        }
        TestResult::Ok(())
    };
    let listing = async {
        let mut seen = Vec::new();
        let mut page_token = None;
        loop {
            let page = b
                .repo()
                .list(&ListQuery {
                    state: None,
                    agent_id: None,
                    page_size: 5,
                    page_token,
                })
                .await?;
            seen.extend(ids(&page.sessions));
            tokio::task::yield_now().await;
            match page.next_page_token {
                Some(token) => page_token = Some(token),
                None => return TestResult::Ok(seen),
            }
        }
    };
    let (churned, seen) = tokio::join!(churn, listing);
    churned?;
    let seen = seen?;
    let unique: BTreeSet<_> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no session listed twice");
    assert!(
        stable.is_subset(&unique),
        "every session that existed throughout is listed"
    );
    Ok(())
}

pub(crate) async fn foreign_and_truncated_page_tokens_are_refused(b: &dyn Backend) -> TestResult {
    for i in 0..5 {
        put(b, &session(new_chat(), "py", at(i))).await?;
    }
    let query = |agent_id: Option<AgentId>, page_token: Option<String>| ListQuery {
        state: None,
        agent_id,
        page_size: 2,
        page_token,
    };
    let first = b.repo().list(&query(Some(agent("py")), None)).await?;
    let token = first.next_page_token.expect("more than one page");
    assert_eq!(
        b.repo()
            .list(&query(Some(agent("py")), Some(token.clone())))
            .await?
            .sessions
            .len(),
        2
    );

    let refused = [
        query(None, Some(token.clone())),
        query(Some(agent("js")), Some(token.clone())),
        query(Some(agent("py")), Some(token[..token.len() - 3].to_owned())),
        query(Some(agent("py")), Some("not-a-token".to_owned())),
        query(Some(agent("py")), Some(String::new())),
    ];
    for q in refused {
        let outcome = b.repo().list(&q).await;
        assert!(
            matches!(outcome, Err(RepositoryError::InvalidPageToken)),
            "{q:?} gave {outcome:?}"
        );
    }
    Ok(())
}
