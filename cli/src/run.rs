//! The client's run loop, written once for every [`ChatClient`]:
//! `grpc-client` and `amqp-client` only add their connection flags and call
//! [`run`]. It settles who the user is (ID, secret, state file), connects,
//! runs one command or the interactive client, and turns the outcome into
//! an exit status.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chat_core::{ChatClient, ClientError, ClientId, ErrorCode, Secret};

use crate::args::{ClientArgs, Command};
use crate::commands;
use crate::connect::retry;
use crate::keeper::Keeper;
use crate::output::Output;
use crate::state_file::{self, StateFile};

/// The exit status of an invalid `--id` or `--secret` (clap's own for a
/// bad argument).
const BAD_ARGUMENT: u8 = 2;

/// Runs the client described by `args` against `config`. `endpoint` names
/// the server or broker in messages; `state_key` names the chat the state
/// file is for (the endpoint, plus anything else that tells chats apart).
pub async fn run<C: ChatClient>(
    config: C::Config,
    endpoint: String,
    state_key: String,
    args: ClientArgs,
) -> ExitCode {
    let tty = args.command.is_none()
        && !args.json
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal();
    let out = Output::new(args.json);
    let (id, given) = match identity(&out, &args) {
        Ok(v) => v,
        Err(e) => {
            out.error(&e);
            return ExitCode::from(BAD_ARGUMENT);
        }
    };
    let Some((mut state, secret)) = open_state(&out, &state_key, &id, given) else {
        return ExitCode::FAILURE;
    };
    let deadline = connect_deadline(&args);
    let connected = retry(&out, &endpoint, deadline, || {
        C::connect(&config, id.clone(), secret.clone())
    })
    .await;
    let result = match connected {
        Ok(client) => dispatch(client, &out, &endpoint, &mut state, tty, args).await,
        Err(e) => {
            out.error(&e);
            return ExitCode::FAILURE;
        }
    };
    finish(&out, &state, &id, result)
}

/// The ID (generated, and said so, when not given) and the secret given.
fn identity(out: &Output, args: &ClientArgs) -> Result<(ClientId, Option<Secret>), ClientError> {
    let id = match &args.id {
        Some(raw) => ClientId::parse(raw)?,
        None => {
            let id = ClientId::generate();
            out.info(format!("no --id given; you are {id}"));
            id
        }
    };
    let secret = args.secret.as_deref().map(Secret::parse).transpose()?;
    Ok((id, secret))
}

/// The state file and the secret to use: the one given, or the one the file
/// keeps (generated on first use). Without a file, a given secret still
/// does; without either, the client cannot prove its ID.
fn open_state(
    out: &Output,
    state_key: &str,
    id: &ClientId,
    given: Option<Secret>,
) -> Option<(Keeper, Secret)> {
    let opened = state_file::default_dir()
        .and_then(|dir| StateFile::open(&dir, state_key, id, given.as_ref()));
    match (opened, given) {
        (Ok((file, secret)), _) => Some((Keeper::new(Some(file), out.clone()), secret)),
        // The user keeps the secret; only the last shown seq is not kept.
        (Err(e), Some(secret)) => {
            out.notice(&format!("{e}; carrying on without it"));
            Some((Keeper::new(None, out.clone()), secret))
        }
        (Err(e), None) => {
            out.error_text(&e.to_string());
            None
        }
    }
}

/// One-shot commands give up on an unreachable server after
/// `--connect-timeout`; the interactive client and `listen` never do.
fn connect_deadline(args: &ClientArgs) -> Option<Instant> {
    match args.command {
        None | Some(Command::Listen { .. }) => None,
        _ => Some(Instant::now() + Duration::from_secs(args.connect_timeout)),
    }
}

async fn dispatch<C: ChatClient>(
    client: C,
    out: &Output,
    endpoint: &str,
    state: &mut Keeper,
    tty: bool,
    args: ClientArgs,
) -> Result<(), ClientError> {
    match args.command {
        Some(Command::Send { to, text }) => {
            commands::send(&client, out, &to, &text.join(" ")).await
        }
        Some(Command::List) => client.list_clients().await.map(|c| out.clients(&c)),
        Some(Command::History) => client.history().await.map(|h| out.history(client.id(), &h)),
        Some(Command::Listen { count, timeout }) => {
            let timeout = timeout.map(Duration::from_secs);
            commands::listen(&client, out, endpoint, state, count, timeout).await
        }
        None => {
            crate::repl::interactive(client, out.clone(), state, tty, endpoint, args.demo).await
        }
    }
}

/// The exit status of a run that got as far as connecting; a refused
/// secret also says where the one this client used is kept.
fn finish(
    out: &Output,
    state: &Keeper,
    id: &ClientId,
    result: Result<(), ClientError>,
) -> ExitCode {
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    out.error(&e);
    if e.code() == Some(ErrorCode::Unauthenticated)
        && let Some(path) = state.path()
    {
        out.notice(&format!(
            "the secret this client used for {id} is kept in {}",
            path.display()
        ));
    }
    ExitCode::FAILURE
}
