//! The parts of the hostile-use tests that both stacks share. Those tests
//! stay per stack because they go around the `ChatClient` trait (raw
//! requests with invalid IDs, thousands of registrations on one
//! connection) or look inside an in-process server (what it holds for a
//! slow consumer); what they check afterwards is the same, and lives here.

use chat_core::{ChatClient, ClientId, Incoming, Message, MessageId};

use crate::env::{assert_no_more, recv_n};

/// Client IDs with control or bidi characters: refused wherever an ID is
/// taken.
pub const IDS_WITH_CONTROLS: [&str; 9] = [
    "a\nb",
    "a\rb",
    "nul\0",
    "\u{7}",
    "tab\t",
    "esc\u{1b}[0m",
    "del\u{7f}",
    "c1\u{85}",
    "rlo\u{202e}",
];

/// How many registrations the "thousands on one connection" tests make.
pub const THOUSANDS: usize = 3000;

/// The ID of the `i`th of those registrations.
pub fn user_id(i: usize) -> String {
    format!("user-{i:04}")
}

fn id(s: &str) -> ClientId {
    ClientId::parse(s).unwrap()
}

/// Bob online and Alice sending to him: the whole service still works.
pub async fn assert_still_serving<C: ChatClient>(alice: &C, bob: &C, text: &str) {
    let mut bob_in = bob.join().await.expect("bob joins");
    alice.register().await.expect("alice registers");
    alice.send(&id("bob"), text).await.expect("alice sends");
    assert_eq!(recv_n(&mut bob_in, 1).await[0].text, text);
    bob_in.close().await;
}

/// After [`THOUSANDS`] registrations and [`assert_still_serving`]: `list`
/// shows every one of them, and alice and bob.
pub async fn assert_lists_the_thousands<C: ChatClient>(client: &C) {
    let listed = client.list_clients().await.expect("list");
    assert_eq!(listed.len(), THOUSANDS + 2);
    let last = user_id(THOUSANDS - 1);
    assert!(listed.iter().any(|c| c.id.as_str() == last), "{last}");
}

/// Carol and Dave join and chat both ways while someone else's mailbox is
/// full: nobody is stalled. Returns their incoming streams, still open.
pub async fn others_still_chat<C: ChatClient>(carol: &C, dave: &C) -> (Incoming, Incoming) {
    const N: usize = 20;
    let mut carol_in = carol.join().await.expect("carol joins");
    let mut dave_in = dave.join().await.expect("dave joins");
    for i in 0..N {
        carol.send(&id("dave"), &format!("c{i}")).await.unwrap();
        dave.send(&id("carol"), &format!("d{i}")).await.unwrap();
    }
    assert_eq!(recv_n(&mut dave_in, N).await.len(), N);
    assert_eq!(recv_n(&mut carol_in, N).await.len(), N);
    (carol_in, dave_in)
}

/// The slow consumer reads at last: every accepted message, in order, once.
/// Returns them.
pub async fn slow_one_gets_all_once(
    slow_in: &mut Incoming,
    accepted: &[MessageId],
) -> Vec<Message> {
    let got = recv_n(slow_in, accepted.len()).await;
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), accepted);
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_no_more(slow_in, std::time::Duration::from_millis(500)).await;
    got
}
