//! A request delivery from `<ns>.server`, parsed at the edge.
//!
//! Anyone who can publish to the broker can put anything on the request
//! queue, so this is outside input: the body may be any bytes and the
//! properties anything. [`decode`] turns it into a typed request or into the
//! [`ChatError::Malformed`] that the server answers (when there is a
//! `reply_to`) and dead-letters the delivery with.

use chat_core::{ChatError, Credentials};
use chat_proto::v1 as pb;
use prost::Message as _;

use crate::topology;

/// The request carried by a delivery whose AMQP `type` property is `kind`
/// (absent is fine) and whose body is `body`, with the credentials it
/// presents (empty when it has none: the handlers then refuse it as
/// UNAUTHENTICATED where an identity is needed).
pub(crate) fn decode(
    kind: Option<&str>,
    body: &[u8],
) -> Result<(pb::request::Body, Credentials), ChatError> {
    if let Some(kind) = kind
        && kind != topology::TYPE_REQUEST
    {
        return Err(ChatError::Malformed(format!(
            "unexpected message type {kind:?} (expected {:?})",
            topology::TYPE_REQUEST
        )));
    }
    let request = pb::Request::decode(body)
        .map_err(|e| ChatError::Malformed(format!("body is not a chat.v1.Request: {e}")))?;
    let creds = request
        .auth
        .map(|a| Credentials::new(a.client_id, a.secret))
        .unwrap_or_default();
    let body = request.body.ok_or_else(|| {
        ChatError::Malformed(
            "request has no body (register, send, send_batch, list_clients, history or join)"
                .into(),
        )
    })?;
    Ok((body, creds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::error_reply;
    use chat_core::{ChatServer, ErrorCode, ServerConfig, proptest_config};
    use proptest::prelude::*;

    /// The reply a refused request gets: an `Error` with a real code.
    fn assert_error_reply(e: &ChatError) {
        match error_reply(e).body {
            Some(pb::reply::Body::Error(err)) => {
                assert_ne!(err.code, ErrorCode::Unspecified as i32, "{err:?}");
                assert!(!err.message.is_empty());
            }
            other => panic!("not an error reply: {other:?}"),
        }
    }

    fn kind() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some(topology::TYPE_REQUEST.to_owned())),
            any::<String>().prop_map(Some),
        ]
    }

    /// Requests a client could send, with fields anyone could put there.
    fn request() -> impl Strategy<Value = pb::Request> {
        let id = prop_oneof!["[a-z]{1,8}", any::<String>()];
        let send = (
            prop_oneof![Just(String::new()), any::<String>()],
            id.clone(),
            id.clone(),
            any::<String>(),
        )
            .prop_map(|(id, from, to, text)| pb::SendRequest { id, from, to, text });
        let body = prop_oneof![
            id.clone().prop_map(
                |client_id| pb::request::Body::Register(pb::RegisterRequest { client_id })
            ),
            send.clone().prop_map(pb::request::Body::Send),
            prop::collection::vec(send, 0..4)
                .prop_map(|sends| pb::request::Body::SendBatch(pb::SendBatchRequest { sends })),
            Just(pb::request::Body::ListClients(pb::ListClientsRequest {})),
            id.clone()
                .prop_map(|client_id| pb::request::Body::History(pb::HistoryRequest {
                    client_id,
                    ..Default::default()
                })),
            id.prop_map(|client_id| pb::request::Body::Join(pb::JoinRequest { client_id })),
        ];
        let auth = prop::option::of(
            (
                prop_oneof!["[a-z]{1,8}", any::<String>()],
                prop_oneof![Just("s3cret".to_owned()), any::<String>()],
            )
                .prop_map(|(client_id, secret)| pb::Auth { client_id, secret }),
        );
        (prop::option::of(body), auth).prop_map(|(body, auth)| pb::Request { body, auth })
    }

    /// Runs a decoded request against a real (temporary) chat server, as
    /// the handlers do: it succeeds or is refused with a proper error.
    async fn apply(
        server: &ChatServer,
        body: pb::request::Body,
        creds: Credentials,
    ) -> Result<(), ChatError> {
        match body {
            pb::request::Body::Register(r) => server.register(&creds, &r.client_id).await.map(drop),
            pb::request::Body::Send(s) => {
                let principal = server.authenticate(&creds)?;
                let cmd = chat_core::SendCommand::parse(s, &server.limits())?;
                server.send(&principal, cmd).await.map(drop)
            }
            pb::request::Body::SendBatch(b) => {
                let principal = server.authenticate(&creds)?;
                let outcome = server.accept_batch(&principal, b.sends)?.durable().await;
                for o in outcome.reply().outcomes {
                    match o.result {
                        Some(pb::send_outcome::Result::Accepted(_)) => {}
                        Some(pb::send_outcome::Result::Error(e)) => {
                            assert_ne!(e.code, ErrorCode::Unspecified as i32, "{e:?}");
                            assert!(!e.message.is_empty());
                        }
                        None => panic!("an outcome without a result"),
                    }
                }
                Ok(())
            }
            pb::request::Body::ListClients(_) => {
                server.list();
                Ok(())
            }
            pb::request::Body::Join(j) => {
                let principal = server.authenticate(&creds)?;
                principal.acting_as(&j.client_id)?;
                server.went_online(principal.id()).map(drop)
            }
            pb::request::Body::History(h) => {
                let principal = server.authenticate(&creds)?;
                server
                    .history_page(&principal, &h.client_id, h.after, h.limit)
                    .await
                    .map(drop)
            }
        }
    }

    proptest! {
        #![proptest_config(proptest_config(256))]

        #[test]
        fn any_bytes_decode_or_get_an_error_reply(
            kind in kind(),
            body in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            if let Err(e) = decode(kind.as_deref(), &body) {
                prop_assert!(matches!(e, ChatError::Malformed(_)), "{e}");
                assert_error_reply(&e);
            }
        }

        #[test]
        fn a_truncated_request_decodes_or_gets_an_error_reply(
            request in request(),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = request.encode_to_vec();
            let whole = decode(Some(topology::TYPE_REQUEST), &bytes);
            prop_assert_eq!(whole.as_ref().ok().map(|(b, _)| b), request.body.as_ref());
            let cut = cut.index(bytes.len() + 1);
            if let Err(e) = decode(None, &bytes[..cut]) {
                assert_error_reply(&e);
            }
        }

        #[test]
        fn a_wrong_type_is_refused_whatever_the_body(
            kind in any::<String>().prop_filter("wrong", |k| k != topology::TYPE_REQUEST),
            request in request(),
        ) {
            let e = decode(Some(&kind), &request.encode_to_vec()).expect_err("wrong type");
            prop_assert!(e.to_string().contains("unexpected message type"), "{}", e);
        }
    }

    proptest! {
        // Each case goes through a real server with its files: fewer cases.
        #![proptest_config(proptest_config(64))]

        #[test]
        fn decoded_requests_are_served_or_refused_with_an_error(
            requests in prop::collection::vec((request(), any::<bool>()), 1..8),
            garbage in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let server = ChatServer::open(ServerConfig::new(dir.path())).unwrap();
            rt.block_on(async {
                for (request, damage) in requests {
                    let mut bytes = request.encode_to_vec();
                    if damage {
                        bytes.extend(&garbage);
                    }
                    match decode(None, &bytes) {
                        Ok((body, creds)) => {
                            if let Err(e) = apply(&server, body, creds).await {
                                assert_error_reply(&e);
                            }
                        }
                        Err(e) => assert_error_reply(&e),
                    }
                }
            });
            server.shutdown();
        }
    }

    #[test]
    fn the_documented_refusals() {
        let e = decode(None, b"").expect_err("empty body");
        assert!(e.to_string().contains("request has no body"), "{e}");
        let e = decode(None, b"\xff\xff\xff").expect_err("garbage");
        assert!(e.to_string().contains("not a chat.v1.Request"), "{e}");
        let e = decode(Some("text/plain"), b"").expect_err("type");
        assert!(e.to_string().contains("unexpected message type"), "{e}");
        let list = pb::Request {
            body: Some(pb::request::Body::ListClients(pb::ListClientsRequest {})),
            auth: None,
        };
        assert!(decode(None, &list.encode_to_vec()).is_ok());
    }
}
