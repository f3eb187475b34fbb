//! chat-testkit: the end-to-end scenarios, written once, run against both
//! stacks.
//!
//! A [`Stack`] says how to start its server binary and reach it; the
//! scenarios in [`scenarios`] then drive real server processes (so `kill -9`
//! is a real SIGKILL) through the `ChatClient` trait and through the client
//! binary. Each adapter crate instantiates them with
//! [`chat_scenarios!`](crate::chat_scenarios) in its `tests/`, so "same
//! features on both stacks" is proven by the same test code.

pub mod env;
pub mod hostile;
pub mod in_process;
pub mod proxy;
pub mod scenarios;

pub use env::{Env, ServerProcess, Stack, kill_and_reap, secret_of};
pub use in_process::InProcess;

/// Generous upper bound for anything that should happen "soon" (a server
/// starting, a message arriving, a client reconnecting) on a loaded 2-core
/// machine. Reaching it fails the test; it is never used to judge speed.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Expands to one `#[tokio::test]` per scenario for the given [`Stack`] type.
#[macro_export]
macro_rules! chat_scenarios {
    ($stack:ty) => {
        $crate::chat_scenarios!(@each $stack;
            register_list_and_online_status,
            duplicate_online_id_is_refused,
            two_clients_both_directions_many_in_flight,
            offline_messages_wait_for_the_recipient,
            history_is_own_messages_oldest_first,
            a_long_history_comes_in_pages,
            log_txt_has_one_readable_line_per_message,
            bad_input_is_refused_and_everyone_else_is_served,
            hostile_texts_are_refused_or_kept_exactly,
            kill9_and_restart_lose_nothing_and_show_nothing_twice,
            sigterm_stops_gracefully_and_state_survives,
            cli_piped_stdin_and_listen,
            cli_forgets_an_unknown_recipient,
            cli_one_shot_commands_and_json,
            cli_errors_are_one_line_with_exit_codes,
            cli_keeps_listening_across_a_server_crash,
            impostors_are_refused_and_claims_survive_a_restart,
            cli_keeps_its_secret_and_never_shows_a_message_twice,
            metrics_count_what_the_server_did,
            concurrent_sends_are_batched_only_with_batching_on,
            a_frozen_client_loses_its_id_and_nothing_is_lost,
            max_pending_holds_for_an_offline_recipient,
            a_second_server_on_the_same_data_dir_is_refused,
            a_taken_metrics_port_stops_the_server_with_a_clear_error,
        );
    };
    (@each $stack:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::scenarios::$name::<$stack>().await;
            }
        )*
    };
}
