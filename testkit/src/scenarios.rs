//! The end-to-end scenarios. Each is generic over a [`Stack`] and talks to
//! a real server process, through the `ChatClient` trait or the client
//! binary.

use std::collections::HashSet;
use std::time::Duration;

use chat_core::log_line::parse_line;
use chat_core::message::parse_timestamp;
use chat_core::{ChatClient, ClientId, ClientInfo, ErrorCode, Incoming};
use futures::future::join_all;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::PATIENCE;
use crate::env::{Env, Stack, assert_no_more, eventually, recv_n, server_command};

/// How long to keep listening for duplicates after the expected messages.
const QUIET: Duration = Duration::from_secs(2);

fn id(s: &str) -> ClientId {
    ClientId::parse(s).unwrap()
}

fn info(list: &[ClientInfo]) -> Vec<(String, bool)> {
    list.iter().map(|c| (c.id.to_string(), c.online)).collect()
}

/// Joins as `name`, retrying while the server still sees an earlier
/// session of the same ID online (it notices a departure asynchronously).
async fn online_when_free<S: Stack>(env: &Env<S>, name: &str) -> (S::Client, Incoming) {
    let client = env.client(name).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match client.join().await {
            Ok(incoming) => return (client, incoming),
            Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => {
                assert!(tokio::time::Instant::now() < deadline, "{name} never freed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("join {name}: {e}"),
        }
    }
}

/// A client whose ID is registered (it may send) but not online.
async fn registered<S: Stack>(env: &Env<S>, name: &str) -> S::Client {
    let client = env.client(name).await;
    client.register().await.expect("register");
    client
}

/// Registers `name` and leaves at once (so it is registered and offline).
async fn register_offline<S: Stack>(env: &Env<S>, name: &str) {
    let (_client, incoming) = env.online(name).await;
    incoming.close().await;
}

pub async fn register_list_and_online_status<S: Stack>() {
    let env = Env::<S>::start().await;
    let (alice, _alice_in) = env.online("alice").await;
    let (_bob, bob_in) = env.online("bob").await;
    assert_eq!(
        info(&alice.list_clients().await.unwrap()),
        vec![("alice".into(), true), ("bob".into(), true)]
    );

    bob_in.close().await;
    eventually("bob shows offline after leaving", || async {
        info(&alice.list_clients().await.unwrap())
            == vec![("alice".into(), true), ("bob".into(), false)]
    })
    .await;

    // New clients can be registered at any time.
    let (carol, _carol_in) = env.online("carol").await;
    let list = info(&carol.list_clients().await.unwrap());
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(list.contains(&("carol".into(), true)), "{list:?}");
}

pub async fn duplicate_online_id_is_refused<S: Stack>() {
    let env = Env::<S>::start().await;
    let (_first, first_in) = env.online("alice").await;
    let second = env.client("alice").await;
    let err = second
        .join()
        .await
        .expect_err("a second alice must be refused");
    assert_eq!(err.code(), Some(ErrorCode::AlreadyExists), "{err}");
    assert!(err.to_string().contains("online already"), "{err}");
    // The refused client can still do one-shot work.
    second.list_clients().await.expect("list while refused");

    // Once the first leaves, the ID can be resumed.
    first_in.close().await;
    let (_again, _in) = online_when_free(&env, "alice").await;
}

pub async fn two_clients_both_directions_many_in_flight<S: Stack>() {
    const N: usize = 100;
    let env = Env::<S>::start().await;
    let (alice, mut alice_in) = env.online("alice").await;
    let (bob, mut bob_in) = env.online("bob").await;

    // All sends in flight at once, in both directions.
    let to_bob = join_all((0..N).map(|i| {
        let alice = alice.clone();
        async move { alice.send(&id("bob"), &format!("a{i}")).await.unwrap().id }
    }));
    let to_alice = join_all((0..N).map(|i| {
        let bob = bob.clone();
        async move { bob.send(&id("alice"), &format!("b{i}")).await.unwrap().id }
    }));
    let (sent_to_bob, sent_to_alice, got_bob, got_alice) = tokio::join!(
        to_bob,
        to_alice,
        recv_n(&mut bob_in, N),
        recv_n(&mut alice_in, N)
    );

    for (sent, got, from) in [
        (&sent_to_bob, &got_bob, "alice"),
        (&sent_to_alice, &got_alice, "bob"),
    ] {
        let sent: HashSet<_> = sent.iter().copied().collect();
        let got_ids: HashSet<_> = got.iter().map(|m| m.id).collect();
        assert_eq!(sent.len(), N, "message IDs are unique");
        assert_eq!(got_ids, sent, "each accepted message arrives exactly once");
        assert!(got.iter().all(|m| m.from.as_str() == from));
        let seqs: Vec<_> = got.iter().map(|m| m.seq).collect();
        let expected: Vec<u64> = (1..=N as u64).collect();
        assert_eq!(seqs, expected, "per-recipient seqs, in order, no gaps");
    }
    assert_no_more(&mut bob_in, QUIET).await;
    assert_no_more(&mut alice_in, QUIET).await;
}

pub async fn offline_messages_wait_for_the_recipient<S: Stack>() {
    let env = Env::<S>::start().await;
    register_offline(&env, "bob").await;
    let alice = registered(&env, "alice").await;
    for text in ["while", "you were", "away"] {
        alice.send(&id("bob"), text).await.unwrap();
    }

    let (_bob, mut bob_in) = online_when_free(&env, "bob").await;
    let got = recv_n(&mut bob_in, 3).await;
    let texts: Vec<_> = got.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["while", "you were", "away"]);
    assert_no_more(&mut bob_in, QUIET).await;

    // Shown and acknowledged: coming back again shows nothing twice.
    bob_in.close().await;
    let (_bob, mut bob_in) = online_when_free(&env, "bob").await;
    assert_no_more(&mut bob_in, QUIET).await;
}

pub async fn history_is_own_messages_oldest_first<S: Stack>() {
    let env = Env::<S>::start().await;
    let (alice, _a) = env.online("alice").await;
    let (bob, mut bob_in) = env.online("bob").await;
    for text in ["h1", "h2", "h3"] {
        alice.send(&id("bob"), text).await.unwrap();
    }
    bob.send(&id("alice"), "b1").await.unwrap();
    let got: Vec<_> = recv_n(&mut bob_in, 3).await;
    let texts: Vec<_> = got.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["h1", "h2", "h3"], "one sender's sends in order");

    let history = alice.history().await.unwrap();
    let texts: Vec<_> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["h1", "h2", "h3"]);
    assert!(
        history
            .iter()
            .all(|m| m.from.as_str() == "alice" && m.to.as_str() == "bob")
    );
    assert!(
        history
            .windows(2)
            .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms)
    );
    let ids: HashSet<_> = history.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 3);

    let texts: Vec<_> = bob
        .history()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["b1"]);
    // An ID nobody registered has no history, and no claim to prove.
    let e = env.client("nobody").await.history().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("register first"), "{e}");
}

/// A history larger than one reply comes in pages that each fit the
/// server's reply limit (`--max-reply-bytes`): the client gets all of it,
/// in order, and the server goes on serving the same client and everyone
/// else.
pub async fn a_long_history_comes_in_pages<S: Stack>() {
    let env = Env::<S>::start_with_env(&[("CHAT_MAX_REPLY_BYTES", "2000")]).await;
    let (alice, _a) = env.online("alice").await;
    let (bob, mut bob_in) = env.online("bob").await;
    let sent: Vec<String> = (0..30)
        .map(|i| format!("{i:02} {}", "x".repeat(100)))
        .collect();
    for text in &sent {
        alice.send(&id("bob"), text).await.unwrap();
    }
    bob.send(&id("alice"), "short").await.unwrap();

    let history = alice.history().await.unwrap();
    let texts: Vec<_> = history.iter().map(|m| m.text.clone()).collect();
    assert_eq!(texts, sent, "all of it, oldest first, across pages");
    let seqs: Vec<_> = history.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>());
    let texts: Vec<_> = bob
        .history()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["short"], "a small history is one page");
    alice.send(&id("bob"), "after").await.unwrap();
    let got = recv_n(&mut bob_in, 31).await;
    assert_eq!(got.last().unwrap().text, "after");
}

pub async fn log_txt_has_one_readable_line_per_message<S: Stack>() {
    let env = Env::<S>::start().await;
    register_offline(&env, "bob").await;
    let alice = registered(&env, "alice").await;
    let texts = ["plain", "two\nlines", "tab\there and a \\ backslash"];
    let mut ids = Vec::new();
    for text in texts {
        ids.push(alice.send(&id("bob"), text).await.unwrap().id);
    }

    let log = env.log_txt();
    let lines: Vec<_> = log.lines().collect();
    assert_eq!(lines.len(), 3, "one line per message:\n{log}");
    assert!(log.ends_with('\n'));
    for ((line, text), id) in lines.iter().zip(texts).zip(&ids) {
        let ts = line.split(' ').next().unwrap();
        assert!(parse_timestamp(ts).is_some() && ts.ends_with('Z'), "{line}");
        assert!(line.contains(&id.to_string()), "{line}");
        assert!(line.contains(" alice -> bob: "), "{line}");
        let parsed = parse_line(line).expect("the line parses back");
        assert_eq!(parsed.text, text);
        assert_eq!(parsed.id, *id);
    }
    assert!(
        lines[1].ends_with("alice -> bob: two\\nlines"),
        "{}",
        lines[1]
    );
}

pub async fn bad_input_is_refused_and_everyone_else_is_served<S: Stack>() {
    let env = Env::<S>::start().await;
    let (_bob, mut bob_in) = env.online("bob").await;
    let alice = registered(&env, "alice").await;
    let max = chat_core::limits::DEFAULT_MAX_TEXT_BYTES;

    let cases = [
        ("", "empty"),
        ("  \n ", "empty"),
        (&"x".repeat(max + 1) as &str, "over the limit"),
    ];
    for (text, why) in cases {
        let err = alice.send(&id("bob"), text).await.expect_err(why);
        assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{why}: {err}");
        assert!(err.to_string().contains(why), "{err}");
    }
    let err = alice
        .send(&id("nobody"), "hello?")
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    assert!(err.to_string().contains("nobody"), "{err}");

    // The server still serves everyone, and a text at the limit is fine.
    alice.send(&id("bob"), &"y".repeat(max)).await.unwrap();
    alice.send(&id("bob"), "still here").await.unwrap();
    let got = recv_n(&mut bob_in, 2).await;
    assert_eq!(got[0].text.len(), max);
    assert_eq!(got[1].text, "still here");
    assert_eq!(
        env.log_txt().lines().count(),
        2,
        "refused messages are not logged"
    );
}

/// Hostile but well-formed texts: over the limit in bytes though not in
/// characters (refused, and the limit is bytes), and control characters,
/// which are text like any other: delivered exactly as sent and escaped in
/// `log.txt`, one line per message.
pub async fn hostile_texts_are_refused_or_kept_exactly<S: Stack>() {
    let env = Env::<S>::start().await;
    let (_bob, mut bob_in) = env.online("bob").await;
    let alice = registered(&env, "alice").await;
    let max = chat_core::limits::DEFAULT_MAX_TEXT_BYTES;

    let wide = "é".repeat(max / 2 + 1);
    assert!(wide.chars().count() < max);
    let err = alice
        .send(&id("bob"), &wide)
        .await
        .expect_err("over in bytes");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");
    assert!(
        err.to_string().contains(&format!(
            "{} bytes, over the limit of {max} bytes",
            wide.len()
        )),
        "{err}"
    );

    let controls = "bell\u{7} nul\u{0} esc\u{1b}[31m cr\r lf\n tab\t del\u{7f} c1\u{85} \
                    rlo\u{202e} bom\u{feff} back\\slash \\n literal";
    let at_limit = "é".repeat(max / 2);
    alice.send(&id("bob"), controls).await.unwrap();
    alice.send(&id("bob"), &at_limit).await.unwrap();
    let got = recv_n(&mut bob_in, 2).await;
    assert_eq!(got[0].text, controls, "delivered exactly as sent");
    assert_eq!(got[1].text, at_limit);

    let log = env.log_txt();
    let lines: Vec<_> = log.lines().collect();
    assert_eq!(lines.len(), 2, "one line per message:\n{log}");
    assert!(!lines[0].chars().any(char::is_control), "{:?}", lines[0]);
    assert!(
        lines[0].ends_with(
            "bell\\u{7} nul\\u{0} esc\\u{1b}[31m cr\\r lf\\n tab\\t del\\u{7f} c1\\u{85} \
             rlo\u{202e} bom\u{feff} back\\\\slash \\\\n literal"
        ),
        "{:?}",
        lines[0]
    );
    assert_eq!(parse_line(lines[0]).expect("parses back").text, controls);
    assert_no_more(&mut bob_in, QUIET).await;
}

pub async fn kill9_and_restart_lose_nothing_and_show_nothing_twice<S: Stack>() {
    let mut env = Env::<S>::start().await;
    let (alice, _alice_in) = env.online("alice").await;
    let (_bob, mut bob_in) = env.online("bob").await;
    register_offline(&env, "carol").await;

    let send_all = |range: std::ops::Range<usize>, to: &'static str| {
        let alice = alice.clone();
        join_all(range.map(move |i| {
            let alice = alice.clone();
            async move { alice.send(&id(to), &format!("m{i}")).await.unwrap().id }
        }))
    };
    let mut accepted: HashSet<_> = send_all(0..20, "bob").await.into_iter().collect();
    let for_carol: HashSet<_> = send_all(0..5, "carol").await.into_iter().collect();
    let mut seen = recv_n(&mut bob_in, 10).await;

    env.take_server().kill9().await;
    env.restart().await;

    // Clients reconnect by themselves; sending works again.
    accepted.extend(send_all(20..40, "bob").await);
    seen.extend(recv_n(&mut bob_in, 30).await);
    let seen_ids: HashSet<_> = seen.iter().map(|m| m.id).collect();
    assert_eq!(seen.len(), 40);
    assert_eq!(
        seen_ids, accepted,
        "every accepted message shown exactly once"
    );
    assert_no_more(&mut bob_in, QUIET).await;

    // Offline messages accepted before the crash wait for their recipient.
    let (_carol, mut carol_in) = online_when_free(&env, "carol").await;
    let got: HashSet<_> = recv_n(&mut carol_in, 5)
        .await
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(got, for_carol);
    assert_no_more(&mut carol_in, QUIET).await;

    assert_eq!(alice.history().await.unwrap().len(), 45);
    assert_eq!(env.log_txt().lines().count(), 45);
}

pub async fn sigterm_stops_gracefully_and_state_survives<S: Stack>() {
    let mut env = Env::<S>::start().await;
    let (alice, alice_in) = env.online("alice").await;
    register_offline(&env, "bob").await;
    alice.send(&id("bob"), "before the restart").await.unwrap();

    let status = env.take_server().terminate().await;
    assert!(status.success(), "graceful exit, got {status}");
    alice_in.close().await;

    env.restart().await;
    let observer = env.client("observer").await;
    let list = info(&observer.list_clients().await.unwrap());
    assert!(list.contains(&("alice".into(), false)), "{list:?}");
    assert!(list.contains(&("bob".into(), false)), "{list:?}");
    let history = env.client("alice").await.history().await.unwrap();
    assert_eq!(history.len(), 1);
    let (_bob, mut bob_in) = env.online("bob").await;
    assert_eq!(recv_n(&mut bob_in, 1).await[0].text, "before the restart");
}

pub async fn cli_piped_stdin_and_listen<S: Stack>() {
    let env = Env::<S>::start().await;
    let listener = env
        .cli("bob")
        .args(["--json", "listen", "--count", "2"])
        .spawn()
        .unwrap();
    let observer = env.client("observer").await;
    eventually("bob is online", || async {
        info(&observer.list_clients().await.unwrap()).contains(&("bob".into(), true))
    })
    .await;

    let mut alice = env
        .cli("alice")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = alice.stdin.take().unwrap();
    stdin
        .write_all(b"/msg bob hello from a pipe\nand a second line\n/quit\n")
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(PATIENCE, alice.wait_with_output())
        .await
        .expect("alice exits after /quit")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("sent to bob").count(), 2, "{stdout}");

    let out = tokio::time::timeout(PATIENCE, listener.wait_with_output())
        .await
        .expect("listen --count 2 exits")
        .unwrap();
    assert!(out.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let texts: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| (e["from"].as_str().unwrap(), e["text"].as_str().unwrap()))
        .collect();
    let seqs: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [Some(1), Some(2)], "{events:?}");
    assert_eq!(
        texts,
        [
            ("alice", "hello from a pipe"),
            ("alice", "and a second line")
        ]
    );
    for e in events.iter().filter(|e| e["event"] == "message") {
        assert!(e["id"].as_str().is_some_and(|s| s.len() == 36), "{e}");
        assert!(
            e["timestamp"]
                .as_str()
                .is_some_and(|s| parse_timestamp(s).is_some()),
            "{e}"
        );
    }
}

/// After a send to a recipient the server does not know fails, plain text
/// no longer goes there: the CLI says so once, and the next plain line is
/// refused at once instead of failing the same way on the server.
pub async fn cli_forgets_an_unknown_recipient<S: Stack>() {
    let env = Env::<S>::start().await;
    let mut alice = env
        .cli("alice")
        .arg("--json")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = alice.stdin.take().unwrap();
    let mut stdout = tokio::io::BufReader::new(alice.stdout.take().unwrap()).lines();
    let mut events = Vec::new();
    stdin.write_all(b"/msg nobody hi\n").await.unwrap();
    let notice = says("info", "plain text has no recipient now");
    read_until(&mut stdout, &mut events, notice).await;
    stdin.write_all(b"still there?\n/quit\n").await.unwrap();
    drop(stdin);
    let refused_locally = says("error", "no recipient (nobody is not registered)");
    read_until(&mut stdout, &mut events, refused_locally).await;
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "error" && e["code"] == "NOT_FOUND")
        .collect();
    assert_eq!(refused.len(), 1, "{events:?}");
    let status = tokio::time::timeout(PATIENCE, alice.wait())
        .await
        .expect("alice exits after /quit")
        .unwrap();
    assert!(status.success(), "{events:?}");
}

/// Matches a `--json` client's event of kind `event` whose message
/// contains `text`.
fn says<'a>(event: &'a str, text: &'a str) -> impl Fn(&serde_json::Value) -> bool + 'a {
    move |e| e["event"] == event && e["message"].as_str().is_some_and(|m| m.contains(text))
}

/// Reads a `--json` client's events into `events` until one satisfies
/// `until` (within [`PATIENCE`]).
async fn read_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    events: &mut Vec<serde_json::Value>,
    until: impl Fn(&serde_json::Value) -> bool,
) {
    let read = async {
        while let Some(line) = lines.next_line().await.expect("client output") {
            let e: serde_json::Value = serde_json::from_str(&line).expect("JSON lines");
            let done = until(&e);
            events.push(e);
            if done {
                return true;
            }
        }
        false
    };
    match tokio::time::timeout(PATIENCE, read).await {
        Ok(true) => {}
        Ok(false) => panic!("the output ended before the awaited event: {events:?}"),
        Err(_) => panic!("no awaited event in time: {events:?}"),
    }
}

pub async fn cli_one_shot_commands_and_json<S: Stack>() {
    let env = Env::<S>::start().await;
    register_offline(&env, "bob").await;

    let out = env.run_cli("alice", &["send", "bob", "hi", "there"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent to bob"));

    let out = env
        .run_cli("alice", &["--json", "send", "bob", "second\nline"])
        .await;
    assert!(out.status.success());
    let accepted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(accepted["event"], "accepted");
    assert_eq!(accepted["to"], "bob");
    assert_eq!(accepted["id"].as_str().unwrap().len(), 36);

    let out = env.run_cli("alice", &["--json", "list"]).await;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["event"], "clients");
    let ids: Vec<_> = list["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["alice", "bob"]);

    let out = env.run_cli("alice", &["--json", "history"]).await;
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history["event"], "history");
    let texts: Vec<_> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["hi there", "second\nline"], "kept exactly");

    let out = env.run_cli("alice", &["history"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("-> bob: hi there"), "{text}");

    let out = env
        .run_cli("bob", &["listen", "--count", "2", "--timeout", "60"])
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("alice: hi there") && text.contains("alice: second"),
        "{text}"
    );
}

pub async fn cli_errors_are_one_line_with_exit_codes<S: Stack>() {
    let env = Env::<S>::start().await;
    register_offline(&env, "bob").await;
    let cases: [(&str, &[&str], i32, &str); 4] = [
        ("alice", &["send", "nobody", "hi"], 1, "unknown recipient"),
        ("alice", &["send", "bob", " "], 1, "empty"),
        ("bad id!", &["list"], 2, "invalid client ID"),
        (
            "alice",
            &["send", "not/valid", "hi"],
            1,
            "invalid client ID",
        ),
    ];
    for (who, args, code, needle) in cases {
        let out = env.run_cli(who, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{stderr}"
        );
    }
    let out = env
        .run_cli("alice", &["--json", "send", "nobody", "hi"])
        .await;
    let event: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(event["event"], "error");
    assert_eq!(event["code"], "NOT_FOUND");
}

pub async fn cli_keeps_listening_across_a_server_crash<S: Stack>() {
    let mut env = Env::<S>::start().await;
    let listener = env
        .cli("bob")
        .args(["--json", "listen", "--count", "2"])
        .spawn()
        .unwrap();
    let alice = registered(&env, "alice").await;
    eventually("bob is online", || async {
        info(&alice.list_clients().await.unwrap()).contains(&("bob".into(), true))
    })
    .await;
    alice.send(&id("bob"), "before the crash").await.unwrap();

    env.take_server().kill9().await;
    env.restart().await;
    let alice = registered(&env, "alice").await;
    alice.send(&id("bob"), "after the crash").await.unwrap();

    let out = tokio::time::timeout(PATIENCE, listener.wait_with_output())
        .await
        .expect("the client reconnected by itself and got both messages")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let texts: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .filter(|e| e["event"] == "message")
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["before the crash", "after the crash"]);
}

/// Expects a refusal with `code`.
fn refused<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, chat_core::ClientError>,
    code: ErrorCode,
) -> chat_core::ClientError {
    let e = r.expect_err(what);
    assert_eq!(e.code(), Some(code), "{what}: {e}");
    e
}

pub async fn impostors_are_refused_and_claims_survive_a_restart<S: Stack>() {
    let mut env = Env::<S>::start().await;
    let (alice, alice_in) = env.online("alice").await;
    register_offline(&env, "bob").await;
    alice.send(&id("bob"), "really alice").await.unwrap();

    // Someone who knows the ID but not the secret gets nowhere.
    let guessed = chat_core::Secret::parse("guessed").unwrap();
    let impostor = env.client_with_secret("alice", guessed.clone()).await;
    let e = refused(
        "register",
        impostor.register().await,
        ErrorCode::Unauthenticated,
    );
    let msg = e.to_string();
    assert!(
        msg.contains("claimed by another secret") && msg.contains("--secret"),
        "{msg}"
    );
    refused("join", impostor.join().await, ErrorCode::Unauthenticated);
    refused(
        "send",
        impostor.send(&id("bob"), "forged").await,
        ErrorCode::Unauthenticated,
    );
    refused(
        "history",
        impostor.history().await,
        ErrorCode::Unauthenticated,
    );
    // Nor can anyone take over bob, offline and claimed.
    let squatter = env.client_with_secret("bob", guessed.clone()).await;
    refused(
        "join bob",
        squatter.join().await,
        ErrorCode::Unauthenticated,
    );

    alice_in.close().await;
    env.take_server().kill9().await;
    env.restart().await;

    // The claims were on disk: the right secrets work, the wrong one not.
    let impostor = env.client_with_secret("alice", guessed).await;
    refused(
        "register after restart",
        impostor.register().await,
        ErrorCode::Unauthenticated,
    );
    let (alice, _alice_in) = online_when_free(&env, "alice").await;
    let history = alice.history().await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].text, "really alice");
    let (_bob, mut bob_in) = online_when_free(&env, "bob").await;
    let got = recv_n(&mut bob_in, 1).await;
    assert_eq!(got[0].text, "really alice");
    assert_no_more(&mut bob_in, QUIET).await;
    assert_eq!(
        env.log_txt().lines().count(),
        1,
        "nothing forged was logged"
    );
}

/// The state file the client binary keeps for `id` in this environment.
fn state_file_of<S: Stack>(env: &Env<S>, id: &str) -> std::path::PathBuf {
    let dir = env.client_state.path().join("chatbench");
    let suffix = format!("--{id}.json");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(&suffix))
        .unwrap_or_else(|| panic!("no state file for {id} in {}", dir.display()))
}

fn texts_shown(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .filter(|e| e["event"] == "message")
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect()
}

pub async fn cli_keeps_its_secret_and_never_shows_a_message_twice<S: Stack>() {
    let env = Env::<S>::start().await;
    let alice = registered(&env, "alice").await;

    // No --secret: one is generated, kept (0600) and used again next time.
    let listen = |count: &'static str| {
        let cmd = env
            .cli_without_secret("dave")
            .args(["--json", "listen", "--count", count, "--timeout", "60"])
            .spawn()
            .unwrap();
        tokio::time::timeout(PATIENCE, cmd.wait_with_output())
    };
    let first = tokio::spawn(listen("1"));
    eventually("dave is online", || async {
        info(&alice.list_clients().await.unwrap()).contains(&("dave".into(), true))
    })
    .await;
    alice.send(&id("dave"), "one").await.unwrap();
    let out = first.await.unwrap().expect("in time").unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(texts_shown(&out), ["one"]);

    let path = state_file_of(&env, "dave");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let secret = state["secret"]
        .as_str()
        .expect("generated secret")
        .to_owned();
    assert_eq!(secret.len(), 64);
    assert_eq!(state["last_shown_seq"], 1);

    // Anyone else (here: another secret) is refused with advice.
    let out = env.run_cli("dave", &["history"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("claimed by another secret") && stderr.contains("--secret"),
        "{stderr}"
    );
    let dave = env
        .client_with_secret("dave", chat_core::Secret::parse(&secret).unwrap())
        .await;
    assert_eq!(
        dave.history().await.unwrap().len(),
        0,
        "the kept secret is dave's"
    );
    drop(dave);

    // "two" is shown, and the client dies before its ack reaches the
    // server: that is the state file saying seq 2 while the server still
    // holds "two" unacknowledged (the CLI writes the file before it acks).
    alice.send(&id("dave"), "two").await.unwrap();
    state["last_shown_seq"] = 2.into();
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    alice.send(&id("dave"), "three").await.unwrap();

    let out = listen("1").await.expect("in time").unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(texts_shown(&out), ["three"], "two was shown already");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(state["last_shown_seq"], 3);
    assert_eq!(
        state["secret"],
        secret.as_str(),
        "the same secret throughout"
    );
}

/// `--metrics-listen`: the server's counters and gauges follow what clients
/// did (the same names and meanings on both stacks).
pub async fn metrics_count_what_the_server_did<S: Stack>() {
    let env = Env::<S>::start_with_env(&[("CHAT_METRICS_LISTEN", "127.0.0.1:0")]).await;
    let addr = env.server.as_ref().unwrap().metrics_addr().await;
    let scrape = || async move { chat_core::metrics::scrape(addr).await.expect("scrape") };
    let start = scrape().await;
    assert_eq!(start.value("chat_clients_registered"), Some(0.0));
    assert_eq!(start.value("chat_messages_accepted_total"), Some(0.0));

    let (alice, _alice_in) = env.online("alice").await;
    let (_bob, mut bob_in) = env.online("bob").await;
    const N: usize = 25;
    for i in 0..N {
        alice.send(&id("bob"), &format!("m{i}")).await.unwrap();
    }
    recv_n(&mut bob_in, N).await;
    let refused = alice.send(&id("nobody"), "hi").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::NotFound), "{refused}");
    // On AMQP the online gauge is what the last list found.
    let listed = alice.list_clients().await.unwrap();
    assert_eq!(listed.iter().filter(|c| c.online).count(), 2);

    let n = N as f64;
    eventually(
        "every message accepted, delivered and acknowledged",
        || async {
            let s = scrape().await;
            s.value("chat_messages_accepted_total") == Some(n)
                && s.value("chat_messages_acked_total") == Some(n)
                && s.value("chat_messages_pending") == Some(0.0)
        },
    )
    .await;
    let s = scrape().await;
    let delivered = s.value("chat_messages_delivered_total").unwrap();
    assert!(delivered >= n, "delivered {delivered} of {n}");
    assert_eq!(s.value("chat_clients_registered"), Some(2.0));
    assert_eq!(s.value("chat_clients_online"), Some(2.0));
    assert_eq!(
        s.labelled("chat_requests_refused_total", "code", "NOT_FOUND"),
        Some(1.0)
    );
    assert_eq!(s.total("chat_requests_refused_total"), 1.0);
    // N messages, 2 registrations and the (cumulative) acks went through
    // the journal.
    let batches = s.histogram("chat_journal_batch_records").unwrap();
    assert!(batches.sum >= n + 3.0, "{batches:?}");
    assert!(batches.count >= 1.0 && batches.count <= batches.sum);
    let appends = s.histogram("chat_journal_append_seconds").unwrap();
    assert_eq!(appends.count, batches.count, "one timing per batch");
}

/// Sends that back up go out as batch requests (gRPC `SendBatch`, AMQP
/// `send_batch`): fewer requests than sends, by the server's own count,
/// every send accepted once with its own ID and delivered once, with
/// gap-free seqs (concurrent sends have no order among themselves). With
/// batching off, one request per send.
pub async fn concurrent_sends_are_batched_only_with_batching_on<S: Stack>() {
    for batching in [true, false] {
        let env = Env::<S>::start_with_env(&[("CHAT_METRICS_LISTEN", "127.0.0.1:0")]).await;
        let addr = env.server.as_ref().unwrap().metrics_addr().await;
        let config = env.stack.client_config_batching(batching);
        let alice = S::Client::connect(&config, id("alice"), crate::secret_of("alice"))
            .await
            .unwrap();
        alice.register().await.unwrap();
        let (_bob, mut incoming) = env.online("bob").await;
        const N: usize = 300;
        let texts: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
        let bob = id("bob");
        let accepted = join_all(texts.iter().map(|t| alice.send(&bob, t))).await;
        let ids: HashSet<_> = accepted.into_iter().map(|a| a.unwrap().id).collect();
        assert_eq!(ids.len(), N, "every send accepted, each with its own ID");
        let got = recv_n(&mut incoming, N).await;
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
        let texts_got: HashSet<&str> = got.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts_got.len(), N, "every text once");
        assert_no_more(&mut incoming, QUIET).await;

        let scrape = chat_core::metrics::scrape(addr).await.unwrap();
        let calls = scrape.histogram("chat_send_batch_messages").unwrap();
        assert_eq!(calls.sum, N as f64, "every send counted once");
        if batching {
            assert!(
                calls.count < N as f64,
                "{} requests for {N} sends",
                calls.count
            );
        } else {
            assert_eq!(calls.count, N as f64, "one request per send");
        }
    }
}

/// A client that freezes (SIGSTOP: its connection stays open, nothing is
/// read or written; here a proxy that holds every byte) loses its ID once
/// the liveness checks notice, with short settings for the test. Then the
/// ID shows offline, comes back from elsewhere with its secret, and gets
/// everything that was sent to it meanwhile, once.
pub async fn a_frozen_client_loses_its_id_and_nothing_is_lost<S: Stack>() {
    const LIVENESS: Duration = Duration::from_secs(1);
    let server_env = S::liveness_env(LIVENESS);
    let server_env: Vec<(&str, &str)> = server_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let env = Env::<S>::start_with_env(&server_env).await;
    let alice = registered(&env, "alice").await;

    let proxy = crate::proxy::Proxy::start(env.stack.client_upstream())
        .await
        .expect("proxy starts");
    let config = env.stack.client_config_via(proxy.addr(), LIVENESS);
    let frozen = tokio::time::timeout(
        PATIENCE,
        S::Client::connect(&config, id("bob"), crate::secret_of("bob")),
    )
    .await
    .expect("connect through the proxy in time")
    .expect("connect through the proxy");
    let frozen_in = tokio::time::timeout(PATIENCE, frozen.join())
        .await
        .expect("join in time")
        .expect("join through the proxy");
    assert!(
        info(&alice.list_clients().await.unwrap()).contains(&("bob".into(), true)),
        "bob is online through the proxy"
    );

    proxy.set_frozen(true);
    let mut sent = Vec::new();
    for i in 0..5 {
        let text = format!("while frozen {i}");
        sent.push(alice.send(&id("bob"), &text).await.expect("accepted").id);
    }
    eventually("the frozen bob shows offline", || async {
        info(&alice.list_clients().await.unwrap()).contains(&("bob".into(), false))
    })
    .await;

    // The same ID, directly, with its secret: everything sent meanwhile,
    // in order, once.
    let (_bob, mut bob_in) = online_when_free(&env, "bob").await;
    let got = recv_n(&mut bob_in, sent.len()).await;
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), sent);
    assert_no_more(&mut bob_in, QUIET).await;
    assert!(
        info(&alice.list_clients().await.unwrap()).contains(&("bob".into(), true)),
        "bob is online again"
    );

    // The frozen client never saw any of it; it goes away with its proxy.
    drop(proxy);
    drop(frozen_in);
    drop(frozen);
    bob_in.close().await;
}

/// `--max-pending` bounds what waits unread for an offline recipient on
/// both stacks: the next send is refused with a message that says why and
/// which flag sets it, other recipients are unaffected, and once the
/// recipient has read, sends to it are accepted again. Nothing refused is
/// delivered or logged; nothing accepted is lost.
pub async fn max_pending_holds_for_an_offline_recipient<S: Stack>() {
    const MAX: usize = 3;
    let max = MAX.to_string();
    let env = Env::<S>::start_with_env(&[("CHAT_MAX_PENDING", max.as_str())]).await;
    register_offline(&env, "bob").await;
    register_offline(&env, "carol").await;
    let alice = registered(&env, "alice").await;

    let mut accepted = Vec::new();
    for i in 0..MAX {
        let a = alice.send(&id("bob"), &format!("m{i}")).await;
        accepted.push(a.expect("under --max-pending").id);
    }
    let e = alice
        .send(&id("bob"), "one too many")
        .await
        .expect_err("over --max-pending");
    assert_eq!(e.code(), Some(ErrorCode::ResourceExhausted), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("\"bob\"") && text.contains(&format!("--max-pending {MAX}")),
        "{text}"
    );
    alice
        .send(&id("carol"), "carol is not bob")
        .await
        .expect("another recipient is unaffected");

    let (_bob, mut bob_in) = online_when_free(&env, "bob").await;
    let got = recv_n(&mut bob_in, MAX).await;
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), accepted);

    // The server learns that bob has read (gRPC: his acks; AMQP: his queue's
    // depth, read back now and then), then accepts again.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let again = loop {
        match alice.send(&id("bob"), "again").await {
            Ok(a) => break a.id,
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::ResourceExhausted), "{e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sends to bob still refused {PATIENCE:?} after he read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let got = recv_n(&mut bob_in, 1).await;
    assert_eq!(got[0].id, again);
    assert_eq!(got[0].text, "again");
    assert_no_more(&mut bob_in, QUIET).await;
    assert!(
        !env.log_txt().contains("one too many"),
        "a refused send is not logged"
    );
    bob_in.close().await;
}

/// Runs the server binary to its exit (within [`PATIENCE`]).
async fn server_exit(mut cmd: tokio::process::Command) -> (Option<i32>, String) {
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .expect("the server exits in time")
        .expect("server output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr)
}

/// A second server on a data directory in use exits at once, saying which
/// directory and why; the first one goes on serving.
pub async fn a_second_server_on_the_same_data_dir_is_refused<S: Stack>() {
    let env = Env::<S>::start().await;
    let (code, stderr) = server_exit(server_command(&env.stack, env.data_dir())).await;
    assert_eq!(code, Some(1), "{stderr}");
    let dir = env.data_dir().display().to_string();
    assert!(
        stderr.contains(&format!("data dir {dir} is in use by another server")),
        "{stderr}"
    );
    assert!(stderr.contains("server.lock"), "{stderr}");
    let (_bob, mut bob_in) = env.online("bob").await;
    let alice = registered(&env, "alice").await;
    alice.send(&id("bob"), "still here").await.unwrap();
    assert_eq!(recv_n(&mut bob_in, 1).await[0].text, "still here");
}

/// A metrics address that is taken stops the server at start, naming the
/// address and the flag.
pub async fn a_taken_metrics_port_stops_the_server_with_a_clear_error<S: Stack>() {
    let stack = S::new().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut cmd = server_command(&stack, dir.path());
    cmd.env("CHAT_METRICS_LISTEN", &addr);
    let (code, stderr) = server_exit(cmd).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve metrics on {addr}"))
            && stderr.contains("--metrics-listen"),
        "{stderr}"
    );
}
