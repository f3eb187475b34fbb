//! The `amqp-client` binary as a process: one-shot commands, `--json`,
//! and piped (non-terminal) input.

mod common;

use std::process::Stdio;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

fn client(ns: &Namespace, id: &str) -> Command {
    ns.track(id);
    let mut c = Command::new(client_bin());
    c.env("AMQP_URL", &ns.url)
        .env("CHAT_AMQP_NAMESPACE", &ns.name)
        .env("XDG_STATE_HOME", ns.state_dir.path())
        .env_remove("CHAT_ID")
        .env_remove("CHAT_SECRET")
        .args(["--id", id])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_commands_with_json_output() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let listener = client(&ns, "bob")
        .args(["--json", "listen", "--count", "2", "--timeout", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until bob is online, then send twice through the CLI.
    let alice = ns.client("alice").await;
    tokio::time::timeout(WAIT, async {
        loop {
            let list = chat_core::ChatClient::list_clients(&alice).await.unwrap();
            if list.iter().any(|c| c.id.as_str() == "bob" && c.online) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap();
    for text in ["first", "two\nlines"] {
        let out = client(&ns, "alice")
            .args(["--json", "send", "bob", text])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let events = json_lines(&out.stdout);
        assert_eq!(events[0]["event"], "accepted", "{events:?}");
        assert_eq!(events[0]["to"], "bob");
    }
    let out = tokio::time::timeout(WAIT, listener.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let messages: Vec<_> = json_lines(&out.stdout)
        .into_iter()
        .filter(|e| e["event"] == "message")
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["text"], "first");
    assert_eq!(messages[1]["text"], "two\nlines");
    assert_eq!(messages[1]["seq"], 2);

    let out = client(&ns, "alice")
        .args(["--json", "history"])
        .output()
        .await
        .unwrap();
    let history = json_lines(&out.stdout);
    assert_eq!(history[0]["event"], "history", "{history:?}");
    assert_eq!(history[0]["messages"].as_array().unwrap().len(), 2);

    let out = client(&ns, "alice")
        .args(["send", "nobody", "hi"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("nobody"), "{said}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_input_sends_every_line() {
    let ns = Namespace::new();
    let server = InProcessServer::start(ns.config()).await;
    let bob = ns.client("bob").await;
    let mut b_in = chat_core::ChatClient::join(&bob).await.unwrap();
    let mut alice = client(&ns, "alice")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = alice.stdin.take().unwrap();
    stdin
        .write_all(b"/msg bob hello\nand again\n/quit\n")
        .await
        .unwrap();
    drop(stdin);
    let got = recv_n(&mut b_in, 2).await;
    // One recipient gets the lines in the order they were typed.
    let texts: Vec<_> = got.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["hello", "and again"]);
    let out = tokio::time::timeout(WAIT, alice.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    server.stop().await;
}
